"""``python -m bnn_tvm inspect [MODEL]``: per ONNX node, the binary kernel it became or why not."""

from __future__ import annotations

import json

from bnn_tvm.relay_passes.conventions import SIGN_ZERO

from ..frontend.export import MODEL_HELP, resolve_model


def add_parser(sub) -> None:
    s = sub.add_parser("inspect", help="show, per ONNX node, the fused binary kernel or why it stayed float")
    s.add_argument("model", nargs="?", help=MODEL_HELP)
    s.add_argument("--batch", type=int)
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.add_argument("--sign-zero", choices=SIGN_ZERO, default="exact", help="what Sign(0) gives: exact (0, as the "
                   "float graph; a Sign that can see 0 costs two binary halves) or plus (+1, as BNN engines do: plain "
                   "binary cost, answers differ from the float graph where a Sign sees exactly 0)")
    s.set_defaults(func=run)


def run(args) -> int:
    from ..compilation.inspection import inspect_onnx

    reports = inspect_onnx(resolve_model(args.model), args.batch, sign_zero=args.sign_zero)
    if args.json:
        print(json.dumps([r.__dict__ for r in reports], indent=2))
        return 0
    width = max(len(r.name) for r in reports)
    for r in reports:
        status = f"binary  {r.kernel}: {r.note}" if r.binary else f"float   {r.note}"
        print(f"{r.name:<{width}}  {r.op_type:<20} {status}")
    binary = sum(r.binary for r in reports)
    print(f"{binary} of {len(reports)} nodes run in binary kernels")
    return 0
