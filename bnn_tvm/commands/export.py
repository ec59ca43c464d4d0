"""``python -m bnn_tvm export``: export a checkpoint or a zoo model to ONNX."""

from __future__ import annotations
from ..atomic_files import refuse_overwriting_input


def add_parser(sub) -> None:
    s = sub.add_parser("export", help="export a checkpoint or a zoo model (seeded random weights) to ONNX")
    s.add_argument("checkpoint", metavar="MODEL",
                   help="a checkpoint from `train` (.pt) or a zoo name such as dfsmn (seeded random weights)")
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=run)


def run(args) -> int:
    import os

    import torch

    from ..training import models
    from ..frontend.export import export_onnx, not_a_model
    from ..training.train import load_checkpoint

    refuse_overwriting_input(args.output, [args.checkpoint], "-o")
    if not os.path.isfile(args.checkpoint) and args.checkpoint in models.ZOO:
        torch.manual_seed(0)  # the weights ``resolve_model`` exports for this name
        export_onnx(models.build(args.checkpoint).eval(), models.input_shape(args.checkpoint), args.output)
    elif not os.path.isfile(args.checkpoint):
        raise not_a_model(args.checkpoint)
    else:
        model, checkpoint = load_checkpoint(args.checkpoint)
        export_onnx(model, models.input_shape(checkpoint["model"]), args.output)
    print(f"exported {args.output}")
    return 0
