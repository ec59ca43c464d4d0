"""``python -m bnn_tvm run``: run a compiled module on a .npy batch."""

from __future__ import annotations

import numpy as np

from ..errors import BnnError


def add_parser(sub) -> None:
    s = sub.add_parser("run", help="run a compiled module on a .npy batch")
    s.add_argument("module")
    s.add_argument("--input", required=True)
    s.add_argument("--output", required=True)
    s.set_defaults(func=run)


def run(args) -> int:
    from ..io import atomic_write
    from ..runtime import CompiledRunner

    runner = CompiledRunner.load(args.module)
    try:
        x = np.load(args.input)
    except (OSError, ValueError) as err:
        raise BnnError(f"cannot read input {args.input}: {err}") from err
    outputs = runner.run(x, source=args.input)
    atomic_write(args.output, lambda tmp: np.save(tmp, outputs[0]))
    print(f"wrote {args.output}: shape {outputs[0].shape}")
    return 0

