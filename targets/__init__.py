"""Named targets: what TVM target a name means, how its modules are linked, and what runs them.

``get(name)`` resolves a built-in name (``names()``), a ``*.json`` file describing a
user-defined target (``from_json``), or a name registered earlier in this process by such a file.
Every spec says which ELF machine its libraries must have, which Debian package brings the cross
compiler, which qemu-user binary and CPU model emulate it, and what the device needs to run them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from bnn_tvm.errors import BnnError

# What a board must have to load a module over RPC or directly.
TVM_WHEELS = "apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post0"
PI_RUNTIME = f"Python 3.11 and `pip install {TVM_WHEELS}` (aarch64 wheels) on the board"
CUDA_DEFAULT_ARCH = "sm_80"

# ELF e_machine values (elf.h) of the libraries each family produces.
ELF_MACHINES = {"x86_64": 62, "aarch64": 183, "arm": 40}


@dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    target: dict = field(hash=False)
    cross_compiler: str | None = None  # g++ driver for export_library, None = host compiler
    apt_package: str | None = None  # where the cross compiler comes from
    family: str = "x86"  # x86 | arm | cuda: which schedules apply
    isa: str = "x86_64"  # x86_64 | aarch64 | arm: the ELF machine of the exported library
    runtime: str = "this host's Python with the project installed"
    qemu: str | None = None  # qemu-user binary that runs the target's code here
    qemu_cpu: str | None = None  # its -cpu model
    sysroot: str | None = None  # cross libc root for qemu -L
    board: str | None = None  # emulated board that serves it over RPC (bnn_tvm.devices.board), if any
    features: tuple = ()  # CPU features the schedules may rely on (x86: from /proc/cpuinfo)
    arch: str | None = None  # CUDA compute capability, e.g. sm_80

    def tvm_target(self):
        import tvm

        return tvm.target.Target(self.target)

    @property
    def device(self) -> str:
        return "cuda" if self.family == "cuda" else "cpu"

    @property
    def elf_machine(self) -> int | None:
        return ELF_MACHINES.get(self.isa)

    @property
    def is_host(self) -> bool:
        """Whether modules for this target load and run in this process."""
        return self.family == "x86" and self.cross_compiler is None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# The x86 features that matter for popcount kernels, as /proc/cpuinfo spells them.
_X86_FEATURES = ("popcnt", "avx2", "avx512f", "avx512bw", "avx512_vpopcntdq", "avx512_bitalg")


def _x86_host() -> TargetSpec:
    import tvm

    cpu = tvm.target.codegen.llvm_get_system_cpu()
    flags = _cpu_flags()
    features = tuple(f for f in _X86_FEATURES if f in flags)
    shown = ", ".join(features) or "no SIMD popcount features found"
    return TargetSpec(
        "x86",
        f"this x86-64 host ({cpu}: {shown})",
        {"kind": "llvm", "mcpu": cpu},
        features=features,
    )


def _aarch64(name: str, description: str, cpu: str, board: str | None = "aarch64") -> TargetSpec:
    return TargetSpec(
        name,
        description,
        {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": cpu, "mattr": ["+neon"]},
        cross_compiler="aarch64-linux-gnu-g++",
        apt_package="g++-aarch64-linux-gnu",
        family="arm",
        isa="aarch64",
        runtime=PI_RUNTIME,
        qemu="qemu-aarch64",
        qemu_cpu=cpu if cpu != "generic" else "max",
        sysroot="/usr/aarch64-linux-gnu",
        board=board,
        features=("neon",),
    )


_FIXED = {
    "x86-avx2": TargetSpec(
        "x86-avx2",
        "x86-64 with AVX2 (Haswell and later), no AVX-512",
        {"kind": "llvm", "mcpu": "haswell"},
        features=("popcnt", "avx2"),
    ),
    "rasp3b": _aarch64("rasp3b", "Raspberry Pi 3B, Cortex-A53, 64-bit Raspberry Pi OS", "cortex-a53"),
    "rasp3b-armv7": TargetSpec(
        "rasp3b-armv7",
        "Raspberry Pi 3B, Cortex-A53, 32-bit Raspberry Pi OS (armv7 hard-float)",
        # Without mfloat-abi=hard the objects use the soft-float ABI and the gnueabihf link fails.
        {
            "kind": "llvm",
            "mtriple": "armv7l-linux-gnueabihf",
            "mcpu": "cortex-a53",
            "mattr": ["+neon"],
            "mfloat-abi": "hard",
        },
        cross_compiler="arm-linux-gnueabihf-g++",
        apt_package="g++-arm-linux-gnueabihf",
        family="arm",
        isa="arm",
        runtime="nothing for `compile --standalone` (libc only, glibc >= 2.34); a TVM module needs a TVM 0.27 "
        "runtime built for armv7l (PyPI has no armv7 wheel)",
        qemu="qemu-arm",
        qemu_cpu="max",  # qemu has no 32-bit Cortex-A53 model
        sysroot="/usr/arm-linux-gnueabihf",
        features=("neon",),
    ),
    "rasp4b": _aarch64("rasp4b", "Raspberry Pi 4B, Cortex-A72, 64-bit Raspberry Pi OS", "cortex-a72"),
    "aarch64": _aarch64("aarch64", "any 64-bit ARM Linux board (generic ARMv8-A with NEON)", "generic"),
}


def _cuda(arch: str | None) -> TargetSpec:
    arch = arch or CUDA_DEFAULT_ARCH
    if not (arch.startswith("sm_") and arch[3:].isdigit()):
        raise BnnError(f"--arch {arch!r} is not a CUDA compute capability like sm_80")
    import tvm

    host = {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()}
    name = "cuda" if arch == CUDA_DEFAULT_ARCH else f"cuda-{arch}"
    return TargetSpec(
        name,
        f"NVIDIA GPU, compute capability {arch} (default {CUDA_DEFAULT_ARCH}; --arch sm_XX)",
        {"kind": "cuda", "arch": arch, "host": host},
        family="cuda",
        runtime="an NVIDIA driver and the CUDA runtime; the host part runs on this x86-64 CPU",
        arch=arch,
    )


# Targets loaded from JSON files in this process, by name (export() looks them up again).
_USER: dict[str, TargetSpec] = {}


def names() -> list[str]:
    return ["x86", *_FIXED, "cuda", *_USER]


def from_json(path: str) -> TargetSpec:
    """A user-defined target: ``{"name", "description", "target": {TVM target dict}, ...}``.

    Optional keys are TargetSpec's other fields (cross_compiler, apt_package, family, isa, qemu,
    qemu_cpu, sysroot, board, runtime). The spec is registered under its name for this process.
    """
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as err:
        raise BnnError(f"target file {path}: {err.strerror}") from err
    except json.JSONDecodeError as err:
        raise BnnError(f"target file {path}: not JSON ({err})") from err
    if not isinstance(data, dict):
        raise BnnError(f"target file {path}: expected a JSON object")
    known = {f.name for f in dataclasses.fields(TargetSpec)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BnnError(f"target file {path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for key in ("name", "target"):
        if key not in data:
            raise BnnError(f"target file {path}: missing key {key!r}")
    if not isinstance(data["target"], dict) or "kind" not in data["target"]:
        raise BnnError(f"target file {path}: 'target' must be a TVM target object with a 'kind'")
    data.setdefault("description", f"user-defined target from {os.path.basename(path)}")
    if "features" in data:
        data["features"] = tuple(data["features"])
    spec = TargetSpec(**data)
    if spec.isa not in ELF_MACHINES and spec.family != "cuda":
        raise BnnError(f"target file {path}: isa {spec.isa!r} is not one of {', '.join(ELF_MACHINES)}")
    try:
        spec.tvm_target()
    except Exception as err:  # TVM's message names the offending key
        raise BnnError(f"target file {path}: TVM refuses the target {data['target']}: {err}") from err
    if spec.name in ("x86", "cuda", *_FIXED):
        raise BnnError(f"target file {path}: name {spec.name!r} is a built-in target; pick another")
    _USER[spec.name] = spec
    return spec


def get(name: str, arch: str | None = None) -> TargetSpec:
    """The target called ``name`` (or described by the JSON file ``name``); ``arch`` is for CUDA."""
    if name.endswith(".json"):
        spec = from_json(name)
    elif name == "x86":
        spec = _x86_host()
    elif name == "cuda" or name.startswith("cuda-sm_"):
        if arch is None and name != "cuda":
            arch = name[len("cuda-") :]
        return _cuda(arch)
    elif name in _FIXED:
        spec = _FIXED[name]
    elif name in _USER:
        spec = _USER[name]
    else:
        raise BnnError(f"unknown target {name!r}; known targets: {', '.join(names())} (or a .json file)")
    if arch is not None:
        raise BnnError(f"--arch applies to cuda targets only (target {name!r} has a fixed CPU)")
    return spec
