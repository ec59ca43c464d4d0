"""Verify random binarized graphs (``tests/random_graphs.py``) against ONNX Runtime, seed by seed.

A longer sweep than the test run's; each failing seed's model is saved in the current folder.

    python tools/random_graph_sweep.py 0 200             # conv graphs on NCHW images
    python tools/random_graph_sweep.py 0 200 --tokens    # binary matmuls on [N, T, C] tokens
    python tools/random_graph_sweep.py 0 200 --signs     # BinaryNet-style Sign chains
    python tools/random_graph_sweep.py 0 50 --target cuda  # on another target (default x86)
    python tools/random_graph_sweep.py 0 50 --target rasp3b --tracker 127.0.0.1:9190 --key rasp3b  # on a board
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import onnx  # noqa: E402
from random_graphs import GENERATORS  # noqa: E402


def parse_args(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description="Verify random binarized graphs (seeds FIRST..LAST-1) against ONNX Runtime.")
    parser.add_argument("first", type=int, help="first seed")
    parser.add_argument("last", type=int, help="one past the last seed")
    kinds = parser.add_mutually_exclusive_group()
    described = {"nchw": "conv graphs on NCHW images (the default)", "tokens": "binary matmuls on [N, T, C] tokens",
                 "signs": "BinaryNet-style Sign chains"}
    for kind in GENERATORS:
        kinds.add_argument(f"--{kind}", dest="kind", action="store_const", const=kind, help=described[kind])
    parser.add_argument("--target", default="x86", help="a name from `python -m bnn_tvm targets` (default x86)")
    from bnn_tvm import targets
    from bnn_tvm.devices.endpoint import Endpoint, add_endpoint_options
    from bnn_tvm.errors import BnnError

    add_endpoint_options(parser, "run on the board's RPC server", "run on a board from this RPC tracker")
    parser.set_defaults(kind="nchw")
    args = parser.parse_args(argv)
    try:  # before the sweep: not a failure saved for every seed
        targets.get(args.target)
    except BnnError as err:
        parser.error(f"--target: {err}")
    try:
        args.endpoint = Endpoint.from_args(args)
    except BnnError as err:
        parser.error(str(err))
    return args


def main(argv=None) -> int:
    import tempfile

    from onnx_builders import save

    from bnn_tvm.compilation.verify import verify

    args = parse_args(argv)
    failed = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(args.first, args.last):
            model, x = GENERATORS[args.kind](seed)
            path = save(model, os.path.join(folder, f"random_{seed}.onnx"))
            try:
                report = verify(path, args.target, x=x, endpoint=args.endpoint)
                lines = report.lines()
            except Exception as err:  # a compile error is a failed seed too; the sweep goes on
                report, lines = None, [f"{type(err).__name__}: {str(err).strip().splitlines()[-1]}"]
            ok = report is not None and report.ok
            print(seed, "OK" if ok else "FAILED", flush=True)
            if not ok:
                failed.append(seed)
                onnx.save(model, f"random_{seed}.onnx")
                print("\n".join(lines), flush=True)
    count = args.last - args.first
    print(f"{count - len(failed)} of {count} exact on {args.target}; failed (saved here): {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
