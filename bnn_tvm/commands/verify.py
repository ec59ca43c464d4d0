"""``python -m bnn_tvm verify``: compile, run and compare bit for bit with ONNX Runtime."""

from __future__ import annotations

import os

from bnn_tvm.relay_passes.conventions import SIGN_ZERO

from ..devices.endpoint import Endpoint, add_endpoint_options
from ..frontend.export import MODEL_HELP, default_checkpoint_path, resolve_model


def add_parser(sub) -> None:
    s = sub.add_parser("verify", help="compile, run and compare bit for bit with ONNX Runtime")
    s.add_argument("model", nargs="?", help=MODEL_HELP + "; the default is checked on its test images, any other "
                   "model on random normal inputs")
    s.add_argument("--target", default="x86")
    s.add_argument("--batch", type=int)
    add_endpoint_options(s, "run the compiled model on a board's RPC server",
                         "run the compiled model on a board from this RPC tracker")
    s.add_argument("--sign-zero", choices=SIGN_ZERO, default="exact", help="what Sign(0) gives: exact (0, as the "
                   "float graph; a Sign that can see 0 costs two binary halves) or plus (+1, as BNN engines do: plain "
                   "binary cost, answers differ from the float graph where a Sign sees exactly 0)")
    s.add_argument("--per-layer", action="store_true", help="also run every compiled kernel on ONNX Runtime's values "
                   "of its inputs (segments cut at binarized tensors and float layers, compiled together once) and "
                   "compare; runs by itself when binarized values differ end to end, to tell a compiler error from "
                   "float rounding upstream of a binarizer")
    s.add_argument("--standalone", action="store_true", help="compile a standalone library (compile --standalone) "
                   "and run it: here through ctypes, or an ARM one under qemu-user (no board needed)")
    s.set_defaults(func=run)


def run(args) -> int:
    from ..compilation.verify import verify

    endpoint = Endpoint.from_args(args)
    x = labels = None
    extra = {}
    path = resolve_model(args.model)
    if args.model is None:
        from ..training.data import digits_split
        from ..training.train import accuracy, load_checkpoint

        _, _, x, labels = digits_split()
        if os.path.isfile(default_checkpoint_path()):
            model, _ = load_checkpoint(default_checkpoint_path())
            extra["pytorch"] = accuracy(model, x, labels)
    report = verify(path, args.target, x=x, labels=labels, batch=args.batch, extra_accuracy=extra, progress=True,
                    endpoint=endpoint, sign_zero=args.sign_zero,
                    per_layer=args.per_layer, standalone=args.standalone)
    for line in report.lines():
        print(line)
    if "pytorch" in report.accuracy and report.accuracy["pytorch"] != report.accuracy["bnn_tvm"]:
        print("VERIFY FAILED: compiled accuracy differs from the PyTorch model's")
        return 1
    return 0 if report.ok else 1

