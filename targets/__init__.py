"""Named targets: what TVM target a name means and how its modules are linked.

Only hosts that can run the module locally are wired end to end today (x86); the ARM entries
name their TVM targets and cross toolchains (see README's feature table for what runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bnn_tvm.errors import BnnError


@dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    target: dict = field(hash=False)
    cross_compiler: str | None = None  # g++ driver for export_library, None = host compiler
    apt_package: str | None = None  # where the cross compiler comes from

    def tvm_target(self):
        import tvm

        return tvm.target.Target(self.target)


def _x86_host() -> TargetSpec:
    import tvm

    cpu = tvm.target.codegen.llvm_get_system_cpu()
    return TargetSpec("x86", f"this x86-64 host ({cpu}), its CPU features detected", {"kind": "llvm", "mcpu": cpu})


_FIXED = {
    "x86-avx2": TargetSpec("x86-avx2", "x86-64 with AVX2 (Haswell and later)", {"kind": "llvm", "mcpu": "haswell"}),
    "rasp3b": TargetSpec(
        "rasp3b",
        "Raspberry Pi 3B, Cortex-A53, 64-bit Raspberry Pi OS",
        {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a53", "mattr": ["+neon"]},
        cross_compiler="aarch64-linux-gnu-g++",
        apt_package="g++-aarch64-linux-gnu",
    ),
}


def names() -> list[str]:
    return ["x86", *_FIXED]


def get(name: str) -> TargetSpec:
    if name == "x86":
        return _x86_host()
    if name in _FIXED:
        return _FIXED[name]
    raise BnnError(f"unknown target {name!r}; known targets: {', '.join(names())}")
