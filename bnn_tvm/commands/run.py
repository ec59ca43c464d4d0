"""``python -m bnn_tvm run``: run a compiled module on a .npy batch."""

from __future__ import annotations

import numpy as np

from ..errors import BnnError


def add_parser(sub) -> None:
    s = sub.add_parser("run", help="run a compiled module on a .npy batch")
    s.add_argument("module")
    s.add_argument("--input", required=True)
    s.add_argument("--output", required=True,
                   help="FILE.npy: the first graph output; FILE.npz: every graph output, under its ONNX name")
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
    names = list(runner.metadata.get("outputs") or [])[: len(outputs)]
    names += [f"output_{i}" for i in range(len(names), len(outputs))]
    if args.output.endswith(".npz"):
        atomic_write(args.output, lambda tmp: np.savez(tmp, **dict(zip(names, outputs))))
        print(f"wrote {args.output}: " + ", ".join(f"{n} {o.shape}" for n, o in zip(names, outputs)))
        return 0
    atomic_write(args.output, lambda tmp: np.save(tmp, outputs[0]))
    print(f"wrote {args.output}: {names[0]}, shape {outputs[0].shape}")
    if len(outputs) > 1:
        print(f"note: the model has {len(outputs)} outputs ({', '.join(names)}); only the first was written: "
              "give --output FILE.npz to keep them all")
    return 0

