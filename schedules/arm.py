"""ARM schedules: NEON, 128-bit vectors of 4 x 32-bit lanes (Cortex-A53 and later).

The structure is ``schedules.cpu``'s. The binary kernels count mismatches in halfword counters
(``cpu.count_mismatches``, ``VectorUnit.halfword_counters``): per step ``eor``, ``cnt v.16b``
(bytes) and one ``uadalp v.8h, v.16b`` (byte pairs added into 16-bit counters) on aarch64,
``veor``, ``vcnt.8``, ``vpadal.u8`` on armv7; the counters are widened to 32 bits once per chunk
of up to 4095 steps (``uadalp .4s`` / ``vpadal.u16``). Where a kernel keeps 32-bit counters (a
tuned "words" tile), LLVM's aarch64 backend lowers the accumulated vector popcount to ``cnt`` +
``uaddlp`` + ``uadalp``, and on armv7 the step is tensorized (``pairwise_accumulate``) into
``vcnt.8`` + ``vpaddl.u8`` (``llvm.arm.neon.vpaddlu``) + ``vpadal.u16``
(``llvm.arm.neon.vpadalu``), since LLVM alone emits ``vpaddl.u16`` and a separate ``vadd.i32``.
Each 32-bit lane of the result is the sum of the four byte counts of the same 32-bit word, so the
sums are exactly those of the compute. ``tests/test_arm_asm.py`` checks the assembly and runs the
kernels under qemu.

aarch64 has 32 vector registers, armv7 16 (as 128-bit ``q`` registers); the accumulator tile
leaves room for the weight vectors and the broadcast activation word. After ``schedules.cpu``:
the conv tiles go on the stack (``stack_tiles``), and stride-1 float convs load a tile's
activations as vectors (``row_loads``); the chunks of few steps are unrolled whole
(``cpu.unroll_taps``). ``tools/arm_kernel_counts.py`` counts each kernel's executed instructions
on the emulated board.
"""

from __future__ import annotations

import os

import tvm
from tvm import s_tir, tirx
from tvm.script import tirx as T

from . import cpu
from .cpu import Scheduled, VectorUnit

ARMV7 = "neon-armv7"
# the popcount reductions of the binary kernels (``schedules.bitserial``), after
# ``cpu.accumulate``'s ``decompose_reduction``
POPCOUNT_UPDATES = ("mismatches_update",)


def vector_unit(target) -> VectorUnit:
    triple = str(target.attrs.get("mtriple", "")) if hasattr(target, "attrs") else ""
    if triple.startswith(("aarch64", "arm64")):
        return VectorUnit("neon-aarch64", lanes=4, accumulators=24, halfword_counters="aarch64",
                          fma_channel_vectors=4)
    return VectorUnit(ARMV7, lanes=4, accumulators=10, halfword_counters="armv7")


def schedule(func, op: str, target) -> Scheduled:
    unit = vector_unit(target)
    scheduled = cpu.schedule_kernel(func, op, unit)
    if unit.name == ARMV7:
        scheduled.func = pairwise_accumulate(scheduled.func)
    if cpu.KERNELS.get(op) in STACK_TILE_SCHEDULES:
        scheduled.func = stack_tiles(scheduled.func)
    if scheduled.plan.startswith("float conv"):
        scheduled.func = row_loads(scheduled.func)
    return scheduled


def row_loads(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """A stride-1 float conv's activations for a tile's positions, per reduction step, copied into
    a small buffer first: a vector load (``ldr q``) where the tile's positions come in whole
    groups of 4, which the FMAs then read by lane (``fmla v.4s, v.4s, v.s[i]``), instead of one
    load per position (``ldr s``/``ld1r``). The same values in the same order: the sums are
    unchanged. Bi-Real's 28-wide 1x1 shortcut conv on the Cortex-A53 (qemu): 2.83 -> 2.53 M
    executed instructions; on armv7 (qemu-arm, standalone library) its three shortcut parts
    (pool + conv) 5.63 -> 5.23, 4.90 -> 4.49 and 4.93 -> 4.50 M. Tiles of 7 positions (14- and 7-wide rows) gained nothing and are left;
    the pointwise convs with such rows are tiled across rows instead, in groups of 4 positions
    (``float_conv.pointwise_conv2d``)."""
    if tuple(int(v) for v in func.attrs.get("bnn.strides", [0, 0])) != (1, 1):
        return func
    sch = s_tir.Schedule(func)
    block = sch.get_sblock("conv_acc_update")
    # the accumulation's loops: reduction (rc, ry, rx), positions, channel vectors, lanes
    rx, tile_positions = sch.get_loops(block)[-4:-2]
    if cpu.extents(sch, [tile_positions])[0] % 4:
        return func
    reads = [str(region.source.name) for region in sch.get(block).reads]
    data = next(i for i, name in enumerate(reads) if not name.startswith("conv_acc"))  # then the weight
    copy = sch.cache_read(block, data, "global")  # global scope: a stack buffer (``stack_tiles``)
    sch.compute_at(copy, rx)
    sch.vectorize(sch.split(sch.get_loops(copy)[-1], [None, 4])[1])
    return sch.mod["main"]


# the kernels whose tiles go on the stack (``stack_tiles``), measured on the Cortex-A53 (qemu,
# executed instructions): the 3x3 64->64 56x56 binary conv 4.33 -> 3.94 M; the sign-pack's word
# buffer on the stack cost more (0.33 -> 1.31 M: LLVM no longer keeps the vector loop), so packs
# keep theirs
STACK_TILE_SCHEDULES = (cpu.conv_float, cpu.float_conv)


def stack_tiles(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """The tile buffers (``local`` scope) as ``global`` ones: TVM's ``LowerTVMBuiltin`` places
    only global-scope CPU buffers under its stack limit on the stack; a local one becomes a
    ``TVMBackendAllocWorkspace`` heap buffer per row, which LLVM cannot keep in registers."""
    sch = s_tir.Schedule(func)
    pending = [sch.get_sblock("root")]
    while pending:
        block = pending.pop()
        for index, region in enumerate(sch.get(block).writes):
            if region.source.scope() == "local":
                sch.set_scope(block, index, "global")
        pending.extend(sch.get_child_blocks(block))
    return sch.mod["main"]


# --------------------------------------------------------------------------------------------
# armv7: popcount accumulation as vcnt.8 + vpaddl.u8 + vpadal.u16


def _popcount_accumulate_funcs(lanes: int, index_dtype: str, form: str = "xor"):
    """The popcount step of ``lanes`` 32-bit lanes (``cpu.popcount_step_funcs``, whose lane loop
    ``cpu.accumulate`` vectorized) as ``vcnt.8`` + ``vpaddl.u8`` + ``vpadal.u16``."""

    def pairwise(words, acc):
        (word,) = words  # one word a step: a both-ternary step is left to LLVM (pairwise_accumulate)
        counts = T.call_llvm_pure_intrin(f"uint8x{4 * lanes}", "llvm.ctpop", T.reinterpret(f"uint8x{4 * lanes}", word))
        halves = T.call_llvm_pure_intrin(f"uint16x{2 * lanes}", "llvm.arm.neon.vpaddlu", counts)
        total = T.call_llvm_pure_intrin(f"int32x{lanes}", "llvm.arm.neon.vpadalu", acc.vload([0], f"int32x{lanes}"), halves)
        T.buffer_store(acc, total, [tirx.Ramp(tirx.IntImm(index_dtype, 0), tirx.IntImm(index_dtype, 1), lanes)])

    return cpu.popcount_step_funcs(lanes, index_dtype, pairwise, vectorized=True, form=form)


def popcount_accumulate_intrin(lanes: int, index_dtype: str, form: str = "xor") -> str:
    """Register (once) and name the armv7 popcount-accumulate step for ``lanes`` lanes and the
    step's word ``form`` (``cpu.STEP_FORMS``)."""
    suffix = "" if form == "xor" else f"_{form}"
    return cpu.register_intrinsic(f"bnn_armv7_vpadal_{lanes}_{index_dtype}{suffix}",
                                  lambda: _popcount_accumulate_funcs(lanes, index_dtype, form))


def pairwise_accumulate(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Tensorize the vectorized lane loop of the popcount accumulation of a kernel scheduled by
    ``schedules.cpu`` into ``vcnt.8`` + ``vpaddl.u8`` + ``vpadal.u16`` (64- or 128-bit vectors).
    Kernels without such a loop (float convs, scalar lanes, the generic fallback), k-bit convs
    and kernels with both operands ternary (several popcounts per step: LLVM's own lowering, the
    same sums) are returned unchanged."""
    if cpu.is_multibit(func):
        return func
    sch = s_tir.Schedule(func)
    for name in POPCOUNT_UPDATES:
        try:
            block = sch.get_sblock(name)
        except (RuntimeError, ValueError, tvm.error.InternalError):
            continue
        lane = sch.get_loops(block)[-1]
        loop = sch.get(lane)
        lanes = int(loop.extent) if isinstance(loop.extent, tirx.IntImm) else 0
        form = cpu.popcount_form(sch, block)
        if loop.kind != tirx.ForKind.VECTORIZED or lanes not in (2, 4) or form in (None, "both_ternary"):
            continue
        try:
            sch.tensorize(lane, popcount_accumulate_intrin(lanes, str(loop.loop_var.ty), form))
        except (RuntimeError, ValueError, tvm.error.InternalError):
            if os.environ.get("BNN_STRICT_SCHEDULES"):
                raise
            return func  # LLVM's own lowering: vpaddl.u16 + vadd, same sums
    return sch.mod["main"]
