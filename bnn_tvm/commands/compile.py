"""``python -m bnn_tvm compile``: compile a model (default: the bundled digits model)."""

from __future__ import annotations

import os

from bnn_tvm.relay_passes.conventions import SIGN_ZERO

from ..frontend.export import MODEL_HELP, resolve_model
from bnn_tvm import targets
from ..atomic_files import refuse_overwriting_input


def add_parser(sub) -> None:
    s = sub.add_parser("compile", help="compile a model (default: the bundled digits model)")
    s.add_argument("model", nargs="?", help=MODEL_HELP)
    s.add_argument("--target", default="x86", help="a name from `python -m bnn_tvm targets`, or a target .json file")
    s.add_argument("--arch", help="CUDA compute capability for --target cuda, e.g. sm_75 (default sm_80)")
    s.add_argument("--batch", type=int, help="batch size compiled in (default: the model's, else 1)")
    s.add_argument("--db", metavar="DIR", help="tuning database (`python -m bnn_tvm tune --db DIR`): use its tuned "
                   "schedules where they beat the hand-written ones")
    s.add_argument("-o", "--output")
    s.add_argument("--sign-zero", choices=SIGN_ZERO, default="exact", help="what Sign(0) gives: exact (0, as the "
                   "float graph; a Sign that can see 0 costs two binary halves) or plus (+1, as BNN engines do: plain "
                   "binary cost, answers differ from the float graph where a Sign sees exactly 0)")
    s.add_argument("--standalone", action="store_true", help="one shared library with a plain C API (bnn_model.h: "
                   "bnn_model_run(in, out), shapes queryable) that needs no TVM runtime: only libc; for CPU targets "
                   "(x86, aarch64, rasp3b-armv7, where PyPI has no TVM runtime); `run` and `verify --standalone` use it")
    s.set_defaults(func=run)


def run(args) -> int:
    from ..compilation.compiler import compile_onnx

    target = targets.get(args.target, arch=args.arch).name  # a .json file registers its target's name
    path = resolve_model(args.model)
    output = args.output or os.path.splitext(os.path.basename(args.model or path))[0] + f"_{target}.so"
    refuse_overwriting_input(output, [args.model, path], "-o")
    compiled = compile_onnx(path, target, batch=args.batch, db=args.db, progress=True, sign_zero=args.sign_zero,
                            standalone=args.standalone)
    compiled.export(output)
    for line in compiled.metadata["fused"]:
        print(f"fused: {line}")
    kind = ", standalone: no TVM runtime needed" if args.standalone else ""
    print(f"compiled {path} for {target} -> {output} ({os.path.getsize(output)} bytes{kind})")
    return 0

