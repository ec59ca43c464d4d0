"""x86 schedules: AVX-512 with VPOPCNTDQ where the target CPU has it, AVX2 otherwise.

The structure is ``schedules.cpu``'s (output channels across vector lanes, a register tile of
accumulators, mask-packed threshold words); this module only says how wide the vectors are and
how many registers the tile may take on the target:

* AVX-512 (32 zmm registers, 16 x 32-bit lanes): ``vpxord``/``vpopcntd``/``vpaddd`` when the CPU
  has VPOPCNTDQ (Ice Lake and later, Zen 4); without it LLVM expands the popcount with
  ``vpshufb`` nibble tables (AVX512-BW), counted in byte counters;
* AVX2 (16 ymm registers, 8 lanes): no popcount instruction; LLVM's vector popcount is the
  nibble-table method (two ``vpshufb`` lookups per byte pair), and the kernels keep its byte
  counts as they are for up to 31 steps (``cpu.count_mismatches``) instead of widening each;
* anything older: SSE-width vectors (4 lanes), byte counters too.
"""

from __future__ import annotations

from . import cpu
from .cpu import Scheduled, VectorUnit


def vector_unit(target) -> VectorUnit:
    """The SIMD unit the target (a ``tvm.target.Target``) promises."""
    from tvm.target import codegen

    with target:
        if codegen.target_has_features("avx512f"):
            if codegen.target_has_features("avx512vpopcntdq"):
                return VectorUnit("avx512-vpopcntdq", lanes=16, accumulators=24,
                                  halfword_popcount=codegen.target_has_features("avx512bitalg"),
                                  word_multiply_add=codegen.target_has_features("avx512vnni"))
            return VectorUnit("avx512", lanes=16, accumulators=24, byte_counters=True,
                              byte_lookup=codegen.target_has_features("avx512bw"))
        if codegen.target_has_features("avx2"):
            return VectorUnit("avx2", lanes=8, accumulators=12, byte_counters=True, byte_lookup=True)
        return VectorUnit("sse", lanes=4, accumulators=12, byte_counters=True,
                          byte_lookup=codegen.target_has_features("ssse3"))


def schedule(func, op: str, target) -> Scheduled:
    return cpu.schedule_kernel(func, op, vector_unit(target))
