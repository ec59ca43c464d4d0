"""``python -m bnn_tvm export``: export a checkpoint to ONNX."""

from __future__ import annotations


def add_parser(sub) -> None:
    s = sub.add_parser("export", help="export a checkpoint to ONNX")
    s.add_argument("checkpoint")
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=run)


def run(args) -> int:
    from .. import models
    from ..export import export_onnx
    from ..train import load_checkpoint

    from ..atomic_files import refuse_overwriting_input

    refuse_overwriting_input(args.output, [args.checkpoint], "-o")
    model, checkpoint = load_checkpoint(args.checkpoint)
    export_onnx(model, models.input_shape(checkpoint["model"]), args.output)
    print(f"exported {args.output}")
    return 0

