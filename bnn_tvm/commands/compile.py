"""``python -m bnn_tvm compile``: compile an ONNX model (default: the bundled digits model)."""

from __future__ import annotations

import os

from ..export import default_model_path


def add_parser(sub) -> None:
    s = sub.add_parser("compile", help="compile an ONNX model (default: the bundled digits model)")
    s.add_argument("model", nargs="?")
    s.add_argument("--target", default="x86")
    s.add_argument("--batch", type=int, help="batch size compiled in (default: the model's, else 1)")
    s.add_argument("-o", "--output")
    s.set_defaults(func=run)


def run(args) -> int:
    from ..compiler import compile_onnx

    path = args.model or default_model_path()
    compiled = compile_onnx(path, args.target, batch=args.batch)
    output = args.output or os.path.splitext(os.path.basename(path))[0] + f"_{args.target}.so"
    compiled.export(output)
    for line in compiled.metadata["fused"]:
        print(f"fused: {line}")
    print(f"compiled {path} for {args.target} -> {output} ({os.path.getsize(output)} bytes)")
    return 0

