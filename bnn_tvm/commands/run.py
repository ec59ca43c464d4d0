"""``python -m bnn_tvm run``: run a compiled module on a .npy batch."""

from __future__ import annotations

import numpy as np

from ..errors import BnnError
from ..atomic_files import atomic_write

OUTPUT_SUFFIXES = (".npy", ".npz")


def add_parser(sub) -> None:
    s = sub.add_parser("run", help="run a compiled module on a .npy batch")
    s.add_argument("module")
    s.add_argument("--input", required=True)
    s.add_argument("--output", required=True,
                   help="FILE.npy: the first graph output; FILE.npz: every graph output, under its ONNX name")
    s.set_defaults(func=run)


def run(args) -> int:
    from ..compilation.runtime import CompiledRunner

    # numpy appends .npy to any other name, so the data would land beside the file asked for
    if not args.output.endswith(OUTPUT_SUFFIXES):
        raise BnnError(f"--output {args.output}: give a .npy (first output) or .npz (every output) file name")
    runner = CompiledRunner.load(args.module)
    x = read_input(args.input)
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


def read_input(path: str) -> np.ndarray:
    """The array in a .npy file (an .npz archive or an empty or cut-short file is refused)."""
    try:
        x = np.load(path, allow_pickle=False)
    except EOFError as err:
        raise BnnError(f"cannot read input {path}: the file is empty or cut short") from err
    except (OSError, ValueError) as err:
        raise BnnError(f"cannot read input {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    if not isinstance(x, np.ndarray):
        x.close()
        raise BnnError(f"cannot read input {path}: it is an .npz archive; give one batch as a .npy file")
    return x
