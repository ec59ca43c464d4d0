"""``python -m bnn_tvm targets [NAME|FILE.json] [--json]``: the named targets and what each needs."""

from __future__ import annotations

import json
import shutil

from bnn_tvm import targets


def add_parser(sub) -> None:
    s = sub.add_parser("targets", help="list compile targets: TVM target, cross compiler, emulator, runtime")
    s.add_argument("target", nargs="?", help="show one target (a name or a user-defined .json file)")
    s.add_argument("--json", action="store_true", help="print machine-readable JSON")
    s.set_defaults(func=run)


def _toolchain(spec) -> str:
    if spec.family == "cuda":
        return "nvcc (CUDA toolkit) for PTX; TVM's own codegen otherwise"
    if not spec.cross_compiler:
        return "host g++"
    state = "installed" if shutil.which(spec.cross_compiler) else f"missing: apt-get install {spec.apt_package}"
    return f"{spec.cross_compiler} ({state})"


def _emulation(spec) -> str:
    if not spec.qemu:
        return "runs natively" if spec.family == "x86" else "-"
    state = "installed" if shutil.which(spec.qemu) else "missing: apt-get install qemu-user"
    board = "; `board start` serves it over RPC" if spec.board else ""
    return f"{spec.qemu} -cpu {spec.qemu_cpu} ({state}){board}"


def run(args) -> int:
    specs = [targets.get(args.target)] if args.target else [targets.get(n) for n in targets.names()]
    if args.json:
        print(json.dumps([s.to_json() for s in specs], indent=2))
        return 0
    for spec in specs:
        print(f"{spec.name}: {spec.description}")
        print(f"    TVM target   {json.dumps(spec.target)}")
        print(f"    compiler     {_toolchain(spec)}")
        print(f"    emulation    {_emulation(spec)}")
        print(f"    runtime      {spec.runtime}")
    return 0
