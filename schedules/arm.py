"""ARM schedules: NEON, 128-bit vectors of 4 x 32-bit lanes (Cortex-A53 and later).

The structure is ``schedules.cpu``'s. A vector popcount of 32-bit lanes that is accumulated
becomes ``eor`` + ``cnt v.16b`` (bytes) + ``uaddlp`` (bytes -> halfwords) + ``uadalp``
(halfwords widened and added into the 32-bit accumulators) in LLVM's aarch64 backend, and
``veor`` + ``vcnt.8`` + ``vpaddl`` + ``vpadal`` on armv7: the horizontal ``addv`` of a scalar
popcount never appears in the inner loop (``tests/test_schedules.py`` checks the assembly).

aarch64 has 32 vector registers, armv7 16 (as 128-bit ``q`` registers); the accumulator tile
leaves room for the weight vectors and the broadcast activation word.
"""

from __future__ import annotations

from . import cpu
from .cpu import Scheduled, VectorUnit


def vector_unit(target) -> VectorUnit:
    triple = str(target.attrs.get("mtriple", "")) if hasattr(target, "attrs") else ""
    if triple.startswith("aarch64") or triple.startswith("arm64"):
        return VectorUnit("neon-aarch64", lanes=4, accumulators=24)
    return VectorUnit("neon-armv7", lanes=4, accumulators=10)


def schedule(func, op: str, target) -> Scheduled:
    return cpu.schedule_kernel(func, op, vector_unit(target))
