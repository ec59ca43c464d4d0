"""TIR schedules of the binary kernels for CPUs with SIMD popcount, shared by x86 and ARM.

The computes (``schedules.bitserial``) are channels-last: packed activations ``[N, H, W, CW]``.
The schedules vectorise over *output channels*: every vector lane accumulates the mismatches of
one output channel, the activation word is broadcast to all lanes, and the weights are read as
whole vectors. So the lane count never depends on the image width, stride 2 costs nothing
extra, and for the 32/64/.../512-channel layers of real networks no lane is ever idle.

Per kernel, one output row of one image is a parallel task (``N * OH`` tasks); inside it a tile
of ``width_block`` output positions by ``channel_block`` output channels is accumulated in
vector registers over the whole reduction (kernel taps x channel words; the tile stays under
TVM's stack-allocation limit so LLVM keeps it in registers), then finished:

* float output (``binary_conv2d``): ``taps - 2 * mismatches + correction`` as vectors of
  channels, converted (and scaled), transposed in registers and stored NCHW as vectors of
  positions (tensor intrinsic ``bnn_tile_out_*``);
* packed output (``*_threshold``): each 32-channel word is compared with its thresholds as a
  vector and the comparison mask *is* the word (``vpcmpd`` + ``kmovw`` per 16 channels on
  AVX-512; tensor intrinsic ``bnn_pack_bits32_*``);
* float epilogue (``*_epilogue``): the per-channel float ops after the layer (weight scale, batch
  norm, bias) applied to the finished tile as vectors of channels, then transposed as above;
* tabulated output (``binary_conv2d_table``): one table lookup per output from the tile;
* dense kernels: the same with batch rows in place of positions.

Weights are constants: their layout is changed at compile time to ``[KH, KW, CW, OC]`` (dense:
``[KW, O]``) so a vector of output channels is one contiguous load; ``schedule_module`` applies
the same permutation to the constant it passes in (``Scheduled.relayouts``). The padding
correction arrives as a small per-border-class table (``bitserial.BorderTable``). The float convs
of a binarized network (``schedules.float_conv``) get the same tile with FMA accumulators.

The inner loop per (tap, word): ``vpxord`` (broadcast activation XOR weight vector),
``vpopcntd``, ``vpaddd`` on AVX-512 VPOPCNTDQ (3 vector uops per 512 bits: the popcount limit
``bench`` measures); on AVX2, ``vpxor``, the nibble-table lookup (``vpand``, ``vpsrlw``,
``vpand``, two ``vpshufb``, ``vpaddb``) and ``vpaddd`` into byte counters, widened once per
chunk of up to 31 steps (``count_mismatches``); on NEON ``eor``, ``cnt`` and one accumulating
pairwise add into halfword counters per 128 bits (``uadalp .8h`` on aarch64, ``vpadal.u8`` on
armv7), widened to 32 bits once per chunk of up to 4095 steps (``count_mismatches``), a conv's
kernel-row taps unrolled so neighbouring positions share their broadcast loads (``unroll_taps``).
"""

from __future__ import annotations

import functools
import operator
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import tvm
from tvm import s_tir, tirx
from tvm.script import tirx as T

from . import mask_pack

from . import bitserial

WORD_BITS = 32
MAX_STACK_BYTES = 1024  # TVM's kMaxStackAlloca: larger local buffers go to the heap
# Body executions below which a parallel launch costs more than it saves: for loop nests of one
# element per execution (a float op, a sign-pack, a padded copy), and for the register-tile
# kernels, whose executions are 16-lane vector popcounts or FMAs. The tile figure is measured:
# the 8x8 digits model's tiny convs (18-37 k executions) made it 1.4x slower on 2 threads than
# on 1 while parallel; serial, 2 threads cost nothing (26 us either way).
PARALLEL_MIN_WORK = 16384
PARALLEL_MIN_TILE_WORK = 65536


@dataclass(frozen=True)
class VectorUnit:
    """What the schedules need to know about a CPU's SIMD unit."""

    name: str  # e.g. "avx512-vpopcntdq", "avx2", "neon"
    lanes: int  # 32-bit lanes per vector register
    accumulators: int  # vector registers the accumulator tile may take (the rest hold operands)
    # count mismatches in byte counters (``count_mismatches``): for units whose popcount is a
    # byte-table lookup, where widening every count to 32 bits costs more than the lookup
    byte_counters: bool = False
    # count mismatches in halfword counters (``count_mismatches``): the byte counts of a vector
    # popcount pairwise-added into 16-bit lanes, widened to 32 bits once per chunk; the name of
    # the NEON flavour whose pairwise adds do it ("aarch64": ``uadalp .8h``, "armv7":
    # ``vpadal.u8``), or "" for none
    halfword_counters: str = ""
    # channel vectors an FMA tile (``float_conv``) may take per step: more weight vectors share
    # each broadcast activation (aarch64's 32 registers hold 4 x 4 accumulators and their operands)
    fma_channel_vectors: int = 2
    # a vector popcount of 16-bit lanes (AVX-512 BITALG ``vpopcntw``): a conv over at most 16
    # channels counts two output positions per 32-bit lane (``count_mismatches``, "pairs")
    halfword_popcount: bool = False
    # a 16-entry table lookup per byte (SSSE3 ``pshufb``): a both-ternary step's two words counted
    # with weights in byte counters (``_byte_lookup_step_funcs``)
    byte_lookup: bool = False
    # a multiply-add of 16-bit pairs into 32-bit lanes (AVX-512 VNNI ``vpdpwssd``): a both-ternary
    # step adds its doubled mismatch count in one instruction (``count_mismatches``)
    word_multiply_add: bool = False


@dataclass
class Scheduled:
    """A scheduled kernel and the constant-argument layout changes its schedule made."""

    func: tirx.PrimFunc
    plan: str
    # parameter position -> axes permutation (numpy ``transpose``) to apply to its constant
    relayouts: dict[int, tuple[int, ...]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Packing 32 decisions into a word: a vector compare-to-mask instead of 32 shifts and adds.


def intrinsic_side(declare, regions, body) -> tirx.PrimFunc:
    """One side (description or implementation) of a tensor intrinsic: the buffers ``declare()``
    returns, then a root block whose reads and writes ``regions(*buffers)`` states and whose
    statements ``body(*buffers)`` emits."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder.tirx import prim_func as build_prim_func

    with IRBuilder() as builder:
        with build_prim_func():
            T.func_attr({"s_tir": True})
            buffers = declare()
            with T.sblock("root"):
                regions(*buffers)
                body(*buffers)
    return builder.get()


def register_intrinsic(name: str, funcs) -> str:
    """Register ``funcs()`` (``(desc, impl)``) as the tensor intrinsic ``name`` once; its name."""
    if s_tir.TensorIntrin.get(name, allow_missing=True) is None:
        s_tir.TensorIntrin.register(name, *funcs())
    return name


def _pack_bits32_funcs(index_dtype: str):
    """``(desc, impl)`` of packing 32 bool decisions into a word (loop index ``index_dtype``)."""

    def declare():
        bits = T.match_buffer(T.arg("bits", T.handle()), (WORD_BITS,), "bool", offset_factor=1)
        word = T.match_buffer(T.arg("word", T.handle()), (1,), "uint32", offset_factor=1)
        return bits, word

    def regions(bits, word):
        T.reads(word[0:1], bits[0:WORD_BITS])
        T.writes(word[0:1])

    def shifts_and_adds(bits, word):
        with T.serial(tirx.IntImm(index_dtype, WORD_BITS)) as b:
            with T.sblock("update"):
                vb = T.axis.reduce(tirx.IntImm(index_dtype, WORD_BITS), b)
                T.reads(word[0], bits[vb])
                T.writes(word[0])
                T.buffer_store(word, word[0] + T.shift_left(T.Cast("uint32", bits[vb]), T.Cast("uint32", vb)), [0])

    def mask(bits, word):
        # <32 x i1> bitcast to i32: compare-into-mask-register + kmov on AVX-512
        packed = T.reinterpret("uint32", T.Cast(f"uint1x{WORD_BITS}", bits.vload([0], f"boolx{WORD_BITS}")))
        T.buffer_store(word, word[0] + packed, [0])

    return intrinsic_side(declare, regions, shifts_and_adds), intrinsic_side(declare, regions, mask)


def pack_bits32_intrin(index_dtype: str) -> str:
    return register_intrinsic(f"bnn_pack_bits32_{index_dtype}", lambda: _pack_bits32_funcs(index_dtype))


# --------------------------------------------------------------------------------------------
# Float NCHW output from a channels-across-lanes tile: an in-register transpose.
#
# The accumulator tile holds, per output position, a vector of ``L`` channels; NCHW wants, per
# channel, a vector of positions. The finished tile is converted (and scaled) on its own
# vectors, then transposed the way x86 code does it by hand: within each
# 128-bit group, 32-bit then 64-bit unpacks turn every 4 rows into 4x4 blocks; a final
# shuffle per column gathers that column's blocks from the row quads. Every step is a
# two-input shuffle LLVM maps to one instruction (``vpunpck*dq``, ``vpunpck*qdq``, ``vpermt2q``;
# ``zip1/zip2`` on NEON).


def quad_transpose(rows: list, lanes: int, shuffle) -> list:
    """Columns of a tile given as ``rows`` (vectors of ``lanes``; ``len(rows)`` a multiple of 4,
    at most ``lanes``): column ``c`` gathers lane ``c`` of every row, in row order.

    ``shuffle(vectors, indices)`` picks ``indices`` of the concatenated ``vectors``; with labels
    for vectors it simulates the transposition (``tests/test_schedules.py`` checks it does).
    """
    groups = lanes // 4

    def unpack(a, b, width, high):
        # per 128-bit group: interleave the low (or high) halves of a and b, width lanes at a time
        idx = []
        for g in range(groups):
            start = 4 * g + (2 if high else 0)
            if width == 1:
                idx += [start, lanes + start, start + 1, lanes + start + 1]
            else:
                idx += [start, start + 1, lanes + start, lanes + start + 1]
        return shuffle([a, b], idx)

    quads = []
    for q in range(0, len(rows), 4):
        r0, r1, r2, r3 = rows[q : q + 4]
        t0, t1 = unpack(r0, r1, 1, False), unpack(r0, r1, 1, True)
        t2, t3 = unpack(r2, r3, 1, False), unpack(r2, r3, 1, True)
        quads.append([unpack(t0, t2, 2, False), unpack(t0, t2, 2, True), unpack(t1, t3, 2, False), unpack(t1, t3, 2, True)])
    columns = []
    for c in range(lanes):
        g, j = divmod(c, 4)
        sources = [quad[j] for quad in quads]
        columns.append(shuffle(sources, [k * lanes + 4 * g + i for k in range(len(sources)) for i in range(4)]))
    return columns


def tile_out_intrin(rows: int, lanes: int, steps: tuple[str, ...], index_dtype: str, tile_dtype: str = "int32",
                    levels: int = 1, activation_scale: float | None = None) -> str:
    """Register (once) and name the tile epilogue for ``rows`` positions x ``lanes`` channels
    with the per-channel float ``steps`` (``bitserial.apply_epilogue``), after a k-bit input's
    ``bitserial.activation_value`` (a division by ``levels``, or a multiply by ``activation_scale``)."""
    activation = activation_suffix(levels, activation_scale)
    name = (f"bnn_tile_out_{tile_dtype}_{rows}x{lanes}{activation}{''.join('_' + step_token(step) for step in steps)}"
            f"_{index_dtype}")
    return register_intrinsic(
        name, lambda: _tile_out_funcs(rows, lanes, tuple(steps), index_dtype, tile_dtype, levels, activation_scale)
    )


def step_token(step: str) -> str:
    """An epilogue step in an intrinsic's name: ``multiply@yx`` as ``multiplyatyx`` (a name is
    letters, digits and ``_``, which separates the steps)."""
    return step.replace("@", "at")


def step_of_token(token: str) -> str:
    """The step a ``step_token`` names (no ``EPILOGUE_OPS`` name holds ``at`` followed by axes only)."""
    return re.sub(r"at([cyx]+)$", r"@\1", token)


def activation_suffix(levels: int = 1, activation_scale: float | None = None) -> str:
    """An intrinsic name's part for a k-bit activation: ``_div{L}`` or ``_mul{float32 bits, hex}``."""
    if activation_scale is not None:
        return f"_mul{struct.unpack('<I', struct.pack('<f', activation_scale))[0]:08x}"
    return f"_div{levels}" if levels != 1 else ""


def scale_of_suffix(bits_hex: str) -> float:
    """The activation scale an ``activation_suffix`` names."""
    return struct.unpack("<f", struct.pack("<I", int(bits_hex, 16)))[0]


def _tile_out_funcs(rows: int, lanes: int, steps: tuple[str, ...], index_dtype: str, tile_dtype: str = "int32",
                    levels: int = 1, activation_scale: float | None = None):
    """``(desc, impl)``: ``out[o, x] = epilogue(activation_value(float(dot[x, o])), consts[o])`` for a
    tile ``dot`` of ``rows`` positions x ``lanes`` channels (the finished integer results, in
    registers), as ``bitserial.dot_to_float_nchw`` computes it.
    Converted and finished (``steps``, one per-channel constant each) as vectors of channels,
    then transposed (zero vectors pad ``rows`` to a multiple of 4) and stored as vectors of
    positions. From the first step that varies along the positions on, the steps run after the
    transpose, on vectors of positions: a ``residual`` (a tensor shaped like ``out``) and a
    ``bitserial.positional_step`` (XNOR++'s per-row or per-column scale: its constant's slice
    for the tile, a vector along the row or one value broadcast) as loaded, the per-channel
    steps among and after them (a batch norm, ReActNet's RPReLU) with their channel's constant
    broadcast."""
    split = next((k for k, step in enumerate(steps) if step == bitserial.RESIDUAL or bitserial.step_axes(step)),
                 len(steps))
    channel_steps, position_steps = steps[:split], steps[split:]

    def declare():
        dot = T.match_buffer(T.arg("dot", T.handle()), (rows, lanes), tile_dtype, offset_factor=1, scope="local",
                             strides=[T.int64(), 1])

        # out (and a residual) is a [channels, 1 row, positions] slice of [N, OC, OH, OW]
        def tile(name, channels=lanes, positions=rows):
            return T.match_buffer(T.arg(name, T.handle()), (channels, 1, positions), "float32", offset_factor=1,
                                  strides=[T.int64(), T.int64(), 1])

        def operand(k, step):
            if step == bitserial.RESIDUAL:
                return tile("res")
            axes = bitserial.step_axes(step)
            if axes is not None:  # a [C|1, H|1, W|1] constant's slice: one row
                return tile(f"c{k}", lanes if "c" in axes else 1, rows if "x" in axes else 1)
            return T.match_buffer(T.arg(f"c{k}", T.handle()), (lanes,), "float32", offset_factor=1)

        return dot, [operand(k, step) for k, step in enumerate(steps)], tile("out")

    def in_read_order(value, operands):
        """Regions in the order the compute's block lists them: as its expression reads them."""
        reads = [value]
        for step, operand in zip(steps, operands):
            reads = [operand] + reads if bitserial.step_op(step) in bitserial.CONST_FIRST_OPS else reads + [operand]
        return reads

    def operand_regions(operands, vo, vx):
        return [c[bitserial.positional_index(bitserial.step_axes(step) or "cx", vo, 0, vx)] if len(c.shape) == 3
                else c[vo] for step, c in zip(steps, operands)]

    def regions(dot, operands, out):
        spans = [c[0 : c.shape[0], 0:1, 0 : c.shape[2]] if len(c.shape) == 3 else c[0:lanes] for c in operands]
        T.reads(*in_read_order(dot[0:rows, 0:lanes], spans))
        T.writes(out[0:lanes, 0:1, 0:rows])

    extent = lambda n: tirx.IntImm(index_dtype, n)  # noqa: E731

    def elementwise(dot, operands, out):
        with T.grid(extent(lanes), extent(rows)) as (o, x):
            with T.sblock("dot_float"):
                vo = T.axis.spatial(extent(lanes), o)
                vx = T.axis.spatial(extent(rows), x)
                T.reads(*in_read_order(dot[vx, vo], operand_regions(operands, vo, vx)))
                T.writes(out[vo, 0, vx])
                value = dot[vx, vo] if tile_dtype == "float32" else T.Cast("float32", dot[vx, vo])
                value = bitserial.activation_value(value, levels, activation_scale)
                value = bitserial.apply_epilogue(value, operand_regions(operands, vo, vx), steps)
                T.buffer_store(out, value, [vo, extent(0), vx])

    padded_rows = -(-rows // 4) * 4

    def along_positions(step, c, o):
        """Step ``step``'s operand for channel ``o`` of the tile as a vector of its positions."""
        axes = bitserial.step_axes(step) or ("cx" if step == bitserial.RESIDUAL else "c")
        channel = T.int64(o) if "c" in axes else T.int64(0)
        if len(c.shape) == 1:
            return tirx.Broadcast(c[channel], rows)
        if "x" in axes:
            return c.vload([channel, T.int64(0), T.int64(0)], f"float32x{rows}")
        return tirx.Broadcast(c[channel, T.int64(0), T.int64(0)], rows)

    def transposed(dot, operands, out):
        vectors = []
        for x in range(padded_rows):
            if x >= rows:
                vectors.append(tirx.Broadcast(T.float32(0), lanes))
                continue
            value = dot.vload([x, 0], f"{tile_dtype}x{lanes}")
            if tile_dtype != "float32":
                value = T.Cast(f"float32x{lanes}", value)
            value = bitserial.activation_value(value, levels, activation_scale, lanes)
            consts = [c.vload([0], f"float32x{lanes}") for c in operands[:split]]
            value = bitserial.apply_epilogue(value, consts, channel_steps)
            # the fence also keeps LLVM from pushing the arithmetic through the shuffles
            # and redoing it on narrower vectors (and spilling)
            vectors.append(bitserial.contraction_fence(value))
        shuffle = lambda vs, idx: tirx.Shuffle(list(vs), [T.int32(k) for k in idx])  # noqa: E731
        for o, column in enumerate(quad_transpose(vectors, lanes, shuffle)):
            if rows < padded_rows:
                column = tirx.Shuffle([column], [T.int32(x) for x in range(rows)])
            if position_steps:
                consts = [along_positions(step, c, o) for step, c in zip(position_steps, operands[split:])]
                column = bitserial.apply_epilogue(column, consts, position_steps)
            T.buffer_store(out, column, [T.int64(o), T.int64(0), tirx.Ramp(T.int64(0), T.int64(1), rows)])

    return intrinsic_side(declare, regions, elementwise), intrinsic_side(declare, regions, transposed)


# --------------------------------------------------------------------------------------------
# Block sizes


def vector_lanes(channels: int, unit: VectorUnit) -> int:
    """The widest power-of-two lane count <= the unit's that divides ``channels``."""
    lanes = unit.lanes
    while lanes > 1 and channels % lanes:
        lanes //= 2
    return lanes


def largest_divisor(n: int, limit: int) -> int:
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def tile(channels: int, width: int, unit: VectorUnit, channel_limit: int | None = None,
         transposed: bool = True, vectors: int | None = None, fewest_loads: bool = False) -> tuple[int, int, int]:
    """``(lanes, channel_block, width_block)``: the register tile of accumulators.

    Two weight vectors per step (reused across the tile's positions) and as many positions as
    the register budget allows; the width block divides the width so no loop needs a tail.
    A tile whose epilogue is ``transposed`` (NCHW out) prefers whole 4x4 blocks of positions;
    a dense's rows are stored as they are, so it takes the most rows that fit. ``vectors``
    fixes the channel vectors per tile (a threshold tile is one 32-channel word). Between tiles of
    as many accumulators, the one with the most positions is taken, or with ``fewest_loads`` (FMA
    tiles, which load an operand per multiply-add) the one loading the fewest operands per step,
    ``positions + vectors``: a Zen 3's 7x7 stem conv took 3.3 ms with 4 positions x 2 vectors
    against 4.5 ms with 8 x 1.
    The tile stays under TVM's stack-allocation limit: a larger local buffer becomes a heap
    workspace, which LLVM cannot keep in registers (it zeroes it with memset and round-trips
    every accumulator through memory).
    """
    lanes = vector_lanes(channels, unit)
    most = unit.fma_channel_vectors if fewest_loads else 2
    if channel_limit is not None:
        most = max(1, min(most, channel_limit // lanes))
    candidates = []
    for vectors in [vectors] if vectors else [v for v in range(most, 0, -1) if channels % (v * lanes) == 0]:
        limit = max(1, min(unit.accumulators // vectors, (MAX_STACK_BYTES - 1) // (4 * lanes * vectors)))
        divisors = [d for d in range(1, min(width, limit) + 1) if width % d == 0]
        quads = [d for d in divisors if d % 4 == 0] if transposed else []  # whole 4x4 blocks: no padding
        positions = max(quads or divisors)
        preference = -(positions + vectors) if fewest_loads else positions
        candidates.append(((positions % 4 == 0 or not transposed, positions * vectors, preference),
                           lanes * vectors, positions))
    _, channel_block, positions = max(candidates)
    return lanes, channel_block, positions


def extents(sch: s_tir.Schedule, loops) -> list[int]:
    return [int(sch.get(loop).extent) for loop in loops]


def block_work(sch: s_tir.Schedule, block) -> int:
    """Executions of ``block``'s body over its whole iteration domain (spatial x reduction)."""
    work = 1
    for var in sch.get(block).iter_vars:
        work *= int(var.dom.extent)
    return work


def parallel(sch: s_tir.Schedule, loop, work: int, least: int = PARALLEL_MIN_WORK) -> None:
    """Run ``loop`` on all cores when the kernel does ``work`` >= ``least`` body executions:
    waking the thread pool costs microseconds, more than a small kernel takes."""
    if work >= least:
        sch.parallel(loop)


def parallel_count(work: int, least: int = PARALLEL_MIN_WORK) -> int:
    """How many outer loops a hand schedule runs in parallel (``parallel_loop``): the first, when
    the kernel does ``work`` >= ``least`` body executions (see ``parallel``), else none."""
    return 1 if work >= least else 0


def parallel_loop(sch: s_tir.Schedule, loops: list, count: int):
    """Fuse the first ``count`` of ``loops`` (adjacent, outermost first) into the parallel loop;
    returns it (the first loop, serial, when ``count`` is 0)."""
    if count == 0:
        return loops[0]
    fused = sch.fuse(*loops[:count]) if count > 1 else loops[0]
    sch.parallel(fused)
    return fused


# --------------------------------------------------------------------------------------------
# Pieces shared by the kernels


def accumulate(sch: s_tir.Schedule, block, lanes: int, spatial: int, reduction: int, step: str | None = None) -> None:
    """Turn a reduction block computed inside a tile into register accumulation.

    The block's innermost loops are ``spatial`` spatial loops (the last one output channels)
    and ``reduction`` reduction loops. The reduction goes outside, the tile inside: positions
    unrolled, channels split into unrolled vectors of ``lanes`` (vectorized, or tensorized by
    the tensor intrinsic ``step``).
    """
    loops = sch.get_loops(block)
    *positions, channels = loops[-(spatial + reduction) : -reduction]
    lane = lay_out_tile(sch, block, loops[-reduction:], positions, channels, lanes, vectorize=lanes > 1 and step is None)
    sch.set_scope(block, 0, "local")
    if step is not None:
        sch.tensorize(lane, step)


MAX_UNROLLED_COLUMNS = 3  # kernel columns and channel words a design space may unroll
MAX_UNROLLED_WORDS = 4


def accumulate_unrolled(sch: s_tir.Schedule, block, lanes: int, reduction: int, step: str | None = None) -> None:
    """``accumulate`` with part of the reduction unrolled: of a conv's kernel columns and
    channel words (``reduction`` 3: ``ry, rx, rc``) or a dense's words (1), an inner part of a
    sampled size (at most ``MAX_UNROLLED_COLUMNS`` and ``MAX_UNROLLED_WORDS``) unrolled inside
    the rest of the reduction, the tile inside it (its lane loop tensorized by ``step`` where given)."""
    loops = sch.get_loops(block)
    reduce = loops[-reduction:]
    positions, channels = loops[-reduction - 2 : -reduction]

    def unrolled_split(loop, most: int):
        (size,) = extents(sch, [loop])
        return sch.split(loop, sch.sample_perfect_tile(loop, n=2, max_innermost_factor=max(1, min(most, size))))

    if reduction == 3:
        ry, rx, rc = reduce
        rx_outer, rx_inner = unrolled_split(rx, MAX_UNROLLED_COLUMNS)
        rc_outer, rc_inner = unrolled_split(rc, MAX_UNROLLED_WORDS)
        outer, unrolled = [ry, rx_outer, rc_outer], [rx_inner, rc_inner]
    else:
        outer, unrolled = unrolled_split(reduce[0], MAX_UNROLLED_WORDS)
        outer, unrolled = [outer], [unrolled]
    sch.reorder(*outer, *unrolled)
    for loop in unrolled:
        sch.unroll(loop)
    lane = lay_out_tile(sch, block, outer + unrolled, [positions], channels, lanes, vectorize=lanes > 1 and step is None)
    sch.set_scope(block, 0, "local")
    if step is not None:
        sch.tensorize(lane, step)


def lay_out_tile(sch: s_tir.Schedule, block, reduce: list, positions: list, channels, lanes: int,
                 vectorize: bool = False):
    """The reduction loops ``reduce`` outside, the tile inside: ``positions`` unrolled,
    ``channels`` split into unrolled vectors of ``lanes`` (the lane loop vectorised if asked);
    the block's initialisation before the reduction. Returns the lane loop."""
    vector_count, lane = sch.split(channels, [None, lanes])
    sch.reorder(*reduce, *positions, vector_count, lane)
    for loop in positions:
        sch.unroll(loop)
    sch.unroll(vector_count)
    if vectorize:
        sch.vectorize(lane)
    sch.decompose_reduction(block, reduce[0])
    return lane


# --------------------------------------------------------------------------------------------
# Byte counters: mismatches counted per byte, widened once per chunk of the reduction.
#
# Without a 32-bit vector popcount (AVX2, AVX-512 without VPOPCNTDQ, SSE), LLVM counts the bits
# of each byte with two ``vpshufb`` nibble-table lookups and then widens the byte counts to a
# 32-bit lane (two ``vpsadbw``, two unpacks, a pack): 14 vector instructions per XOR word vector
# in the AVX2 conv's inner loop, the broadcast of the activation word included, against 9 with
# byte counters (``test_avx2_conv_uses_nibble_table_popcount``). Byte counters keep the counts
# as they come: per 32-bit lane, four byte counters, each adding at most 8 per step, so 31
# steps stay below 256 and cannot carry into the next byte. The reduction is split into chunks
# of at most 31 steps (``rfactor``): a chunk accumulates byte counters (``bnn_byte_step``: XOR,
# lookup, one add), then the four counters of each lane are summed into the 32-bit total
# (``bnn_byte_finish``: two masked adds). Measured on a Zen 3 (AVX2), Bi-Real ResNet-18's 3x3 convs: 1.5-2.0x faster.
#
# The chunk's partial result is TVM's ``rfactor`` buffer, declared int32 like the sum it
# replaces: the step intrinsic stores byte counters there (as uint32 bits) and only the finish
# intrinsic reads them, so nothing else sees the packed form.

MAX_CHUNK_STEPS = 31  # 8 bits per step and byte counter: 31 * 8 = 248 < 256
MIN_BYTE_COUNTER_LANES = 4  # narrower tiles (odd channel counts) keep 32-bit counters


def popcount_bytes(word):
    """Per byte of each 32-bit lane of ``word`` (uint32xL), its popcount, in place."""
    lanes = word.ty.dtype.lanes
    return tirx.reinterpret(f"uint32x{lanes}", tirx.popcount(tirx.reinterpret(f"uint8x{4 * lanes}", word)))


def sum_bytes(counters):
    """The sum of the four byte counters of each 32-bit lane (uint32xL)."""
    lanes = counters.ty.dtype.lanes
    const = lambda v: tirx.Broadcast(tirx.const(v, "uint32"), lanes)  # noqa: E731
    pairs = (counters & const(0x00FF00FF)) + ((counters >> const(8)) & const(0x00FF00FF))
    return (pairs & const(0xFFFF)) + (pairs >> const(16))


# What a popcount step adds, by what the block's term reads: the popcount of ``a ^ w`` (binary),
# of a ternary activation's ``(a_sign ^ w) & a_nonzero`` (two words of the input) or of ternary
# weights' ``(a ^ w_sign) & w_nonzero`` (two planes of weight vectors); with both ternary,
# ``2 popcount(x & m) - popcount(m)`` (``bitserial.ternary_conv2d_dot``).
STEP_FORMS = ("xor", "masked_data", "masked_weight", "both_ternary")


def step_term(form: str, a, w, o):
    """The int32 term a step adds for output channel ``o`` (the description)."""
    if form == "both_ternary":
        both = a[1] & w[1, o]
        mismatch = (a[0] ^ w[0, o]) & both
        return T.Cast("int32", tirx.popcount(mismatch)) * 2 - T.Cast("int32", tirx.popcount(both))
    if form == "masked_data":
        word = (a[0] ^ w[o]) & a[1]
    elif form == "masked_weight":
        word = (a[0] ^ w[0, o]) & w[1, o]
    else:
        word = a[0] ^ w[o]
    return T.Cast("int32", tirx.popcount(word))


def both_ternary_vectors(_form: str, a, w, lanes: int) -> list:
    """For ``lanes`` output channels of a both-ternary step, ``[x, m]``: the taps whose signs
    differ and the taps where both are nonzero; the term is ``2 popcount(x & m) - popcount(m)``
    (the implementations' ``vectors``: each masks ``x`` where it is cheapest)."""
    vector = f"uint32x{lanes}"
    broadcast = lambda i: tirx.Broadcast(a[i], lanes)  # noqa: E731
    return [broadcast(0) ^ w.vload([0, 0], vector), broadcast(1) & w.vload([1, 0], vector)]


def step_vectors(form: str, a, w, lanes: int) -> list:
    """For ``lanes`` output channels, the vectors of words whose popcounts the implementations
    add: the step's word, or with both ternary ``m & ~x`` and ``~(m & x)``, whose popcounts add
    up to ``32 - term`` (never negative, at most 8 a byte each: NEON's halfword counters take
    them, and the finish turns them back, ``_halfword_finish_funcs``)."""
    vector = f"uint32x{lanes}"
    broadcast = lambda i: tirx.Broadcast(a[i], lanes)  # noqa: E731
    if form == "both_ternary":
        both, sign = broadcast(1) & w.vload([1, 0], vector), broadcast(0) ^ w.vload([0, 0], vector)
        return [both & ~sign, ~(both & sign)]
    if form == "masked_data":
        return [(broadcast(0) ^ w.vload([0], vector)) & broadcast(1)]
    if form == "masked_weight":
        return [(broadcast(0) ^ w.vload([0, 0], vector)) & w.vload([1, 0], vector)]
    return [broadcast(0) ^ w.vload([0], vector)]


def chunk_steps(form: str) -> int:
    """Steps a byte counter takes before it could carry: each word of a step adds at most 8."""
    return MAX_CHUNK_STEPS // (2 if form == "both_ternary" else 1)


def popcount_step_funcs(lanes: int, index_dtype: str, implementation, vectorized: bool = False, form: str = "xor",
                        vectors=step_vectors):
    """``(desc, impl)`` of one reduction step of a vector of output channels, ``acc[o] +=
    popcount(word[o])`` with the ``form``'s word (``step_word``): one activation word (two for a
    ternary activation, a plane apart) against ``lanes`` weight words (two planes of them for
    ternary weights), int32 accumulators ``acc``; the description's lane loop ``vectorized``
    where the schedule vectorized it. ``implementation(words, acc)`` emits the implementation
    from the vectors of words ``vectors(form, a, w, lanes)`` (``step_vectors``; a both-ternary
    step's ``both_ternary_vectors``) (byte counters here, ``schedules.arm``'s pairwise NEON
    accumulation)."""
    extent = lambda n: tirx.IntImm(index_dtype, n)  # noqa: E731
    words = 2 if form in ("masked_data", "both_ternary") else 1
    planes = 2 if form in ("masked_weight", "both_ternary") else 1

    def declare():
        plane_stride = tirx.Var("plane_stride", index_dtype)  # wherever the planes lie apart
        a = T.match_buffer(T.arg("a", T.handle()), (words,), "uint32", offset_factor=1,
                           strides=[plane_stride] if words > 1 else None)
        w_shape, w_strides = ((lanes,), None) if planes == 1 else ((planes, lanes), [tirx.Var("w_stride", index_dtype), 1])
        w = T.match_buffer(T.arg("w", T.handle()), w_shape, "uint32", offset_factor=1, strides=w_strides)
        acc = T.match_buffer(T.arg("acc", T.handle()), (lanes,), "int32", offset_factor=1, scope="local")
        return a, w, acc

    def regions(a, w, acc):
        T.reads(acc[0:lanes], a[0:words], w[0:lanes] if planes == 1 else w[0:planes, 0:lanes])
        T.writes(acc[0:lanes])

    def popcounts(a, w, acc):
        with (T.vectorized if vectorized else T.serial)(extent(lanes)) as o:
            with T.sblock("update"):
                vo = T.axis.spatial(extent(lanes), o)
                T.reads(acc[vo], a[0:words], w[vo] if planes == 1 else w[0:planes, vo])
                T.writes(acc[vo])
                T.buffer_store(acc, acc[vo] + step_term(form, a, w, vo), [vo])

    def implement(a, w, acc):
        implementation(vectors(form, a, w, lanes), acc)

    return intrinsic_side(declare, regions, popcounts), intrinsic_side(declare, regions, implement)


def _byte_step_funcs(lanes: int, index_dtype: str, form: str = "xor"):
    """The popcount step (``popcount_step_funcs``) implemented with byte counters (see the
    section's comment)."""

    def byte_counts(words, acc):
        counts = functools.reduce(operator.add, [popcount_bytes(word) for word in words])
        counters = tirx.reinterpret(f"uint32x{lanes}", acc.vload([0], f"int32x{lanes}")) + counts
        ramp = tirx.Ramp(tirx.IntImm(index_dtype, 0), tirx.IntImm(index_dtype, 1), lanes)
        T.buffer_store(acc, tirx.reinterpret(f"int32x{lanes}", counters), [ramp])

    return popcount_step_funcs(lanes, index_dtype, byte_counts, form=form)


# A both-ternary step in byte counters: two words a step, ``m`` (both nonzero) and ``x & m``
# (their signs differ), each split into nibbles and looked up in a table (``vpshufb``): the
# popcount table for ``m``'s nibbles and ``4 - 2 popcount`` for ``x & m``'s, so that the four
# lookups of a byte add ``popcount(m) - 2 popcount(x & m) + 8``, in 0..16 (``x & m`` lies in ``m``),
# and a 32-bit lane's four bytes ``32 - term``, what the complement form's two popcounts add
# (``step_vectors``; the same finish, ``_byte_finish_funcs``). The mask of the nibbles is shared:
# ``x & m``'s low nibbles are ``x & (m & 0x0f)``, its high ones ``(x >> 4) & ((m >> 4) & 0x0f)``.
# 16 vector operations a step on AVX2 against 19 for the complement form's LLVM lowering (its
# NOT and two full popcounts), and 8 for a binary step.

NIBBLE_POPCOUNTS = [bin(n).count("1") for n in range(16)]
NIBBLE_SIGNED_MISMATCHES = [(4 - 2 * c) % 256 for c in NIBBLE_POPCOUNTS]  # 4 - 2 popcount, a byte modulo 256


def byte_table(entries: list[int], lanes: int):
    """The 16 bytes ``entries`` in every 128 bits of a vector of ``lanes`` 32-bit lanes, as bytes."""
    words = [tirx.Broadcast(tirx.const(int.from_bytes(bytes(entries[4 * i : 4 * i + 4]), "little"), "uint32"), lanes)
             for i in range(4)]
    return tirx.reinterpret(f"uint8x{4 * lanes}", tirx.Shuffle(words, [(k % 4) * lanes + k for k in range(lanes)]))


def look_up_bytes(table, index, lanes: int):
    """``table[index]`` per byte (``pshufb``; an index's low 4 bits, its bit 7 clear)."""
    name = {4: "llvm.x86.ssse3.pshuf.b.128", 8: "llvm.x86.avx2.pshuf.b", 16: "llvm.x86.avx512.pshuf.b.512"}[lanes]
    return T.call_llvm_pure_intrin(f"uint8x{4 * lanes}", name, table, tirx.reinterpret(f"uint8x{4 * lanes}", index))


def shift_halfwords(vector, bits: int):
    """``vector`` (uint32xL) shifted right by ``bits`` per 16-bit half: under a mask of each byte's
    low nibble the same as a 32-bit shift, but LLVM does not merge it with the shift of ``m``'s
    high nibbles (it would rewrite ``(x >> 4) & (m >> 4) & 0x0f`` as ``((x & m) >> 4) & 0x0f``, one
    operation more, ``m >> 4`` being needed anyway)."""
    lanes = vector.ty.dtype.lanes
    halves = tirx.reinterpret(f"uint16x{2 * lanes}", vector) >> tirx.Broadcast(tirx.const(bits, "uint16"), 2 * lanes)
    return tirx.reinterpret(f"uint32x{lanes}", halves)


def _byte_lookup_step_funcs(lanes: int, index_dtype: str):
    """The both-ternary popcount step in byte counters by weighted nibble lookups (see above)."""

    def lookups(words, acc):
        signs, both = words
        const = lambda v: tirx.Broadcast(tirx.const(v, "uint32"), lanes)  # noqa: E731
        low, high = both & const(0x0F0F0F0F), (both >> const(4)) & const(0x0F0F0F0F)
        popcounts, signed = byte_table(NIBBLE_POPCOUNTS, lanes), byte_table(NIBBLE_SIGNED_MISMATCHES, lanes)
        counts = [look_up_bytes(popcounts, low, lanes), look_up_bytes(popcounts, high, lanes),
                  look_up_bytes(signed, signs & low, lanes), look_up_bytes(signed, shift_halfwords(signs, 4) & high, lanes)]
        counters = functools.reduce(operator.add, counts, tirx.reinterpret(f"uint8x{4 * lanes}", acc.vload([0], f"int32x{lanes}")))
        ramp = tirx.Ramp(tirx.IntImm(index_dtype, 0), tirx.IntImm(index_dtype, 1), lanes)
        T.buffer_store(acc, tirx.reinterpret(f"int32x{lanes}", counters), [ramp])

    return popcount_step_funcs(lanes, index_dtype, lookups, form="both_ternary", vectors=both_ternary_vectors)


def _finish_funcs(lanes: int, index_dtype: str, add_counters):
    """``(desc, impl)`` of a chunk's finish: ``acc[o] += part[o]``, where the implementation's
    ``part`` holds narrow counters (bytes, halfwords) that ``add_counters(part, acc)`` sums into
    ``acc``."""
    extent = lambda n: tirx.IntImm(index_dtype, n)  # noqa: E731

    def declare():
        part = T.match_buffer(T.arg("part", T.handle()), (lanes,), "int32", offset_factor=1, scope="local")
        acc = T.match_buffer(T.arg("acc", T.handle()), (lanes,), "int32", offset_factor=1, scope="local")
        return part, acc

    def regions(part, acc):
        T.reads(acc[0:lanes], part[0:lanes])
        T.writes(acc[0:lanes])

    def sums(part, acc):
        with T.serial(extent(lanes)) as o:
            with T.sblock("update"):
                vo = T.axis.spatial(extent(lanes), o)
                T.reads(acc[vo], part[vo])
                T.writes(acc[vo])
                T.buffer_store(acc, acc[vo] + part[vo], [vo])

    return intrinsic_side(declare, regions, sums), intrinsic_side(declare, regions, add_counters)


def _byte_finish_funcs(lanes: int, index_dtype: str, minus_from: int = 0):
    """The finish summing ``part``'s byte counters; with ``minus_from`` (both ternary: ``32 *
    steps`` of the chunk) the counters hold ``minus_from - part``, and it adds ``minus_from -
    their sum``."""

    def byte_sums(part, acc):
        counts = tirx.reinterpret(f"int32x{lanes}", sum_bytes(tirx.reinterpret(f"uint32x{lanes}",
                                                                                part.vload([0], f"int32x{lanes}"))))
        if minus_from:
            counts = tirx.Broadcast(tirx.const(minus_from, "int32"), lanes) - counts
        T.buffer_store(acc, acc.vload([0], f"int32x{lanes}") + counts,
                       [tirx.Ramp(tirx.IntImm(index_dtype, 0), tirx.IntImm(index_dtype, 1), lanes)])

    return _finish_funcs(lanes, index_dtype, byte_sums)


def byte_step_intrin(lanes: int, index_dtype: str, form: str = "xor") -> str:
    suffix = "" if form == "xor" else f"_{form}"  # the binary step keeps the name stored tuning records use
    if form == "both_ternary":  # its counters as before (32 - term a step): the same finish
        return register_intrinsic(f"bnn_byte_step_{lanes}_{index_dtype}{suffix}",
                                  lambda: _byte_lookup_step_funcs(lanes, index_dtype))
    return register_intrinsic(f"bnn_byte_step_{lanes}_{index_dtype}{suffix}",
                              lambda: _byte_step_funcs(lanes, index_dtype, form))


def byte_finish_intrin(lanes: int, index_dtype: str, minus_from: int = 0) -> str:
    suffix = f"_minus_from_{minus_from}" if minus_from else ""
    return register_intrinsic(f"bnn_byte_finish_{lanes}_{index_dtype}{suffix}",
                              lambda: _byte_finish_funcs(lanes, index_dtype, minus_from))


# --------------------------------------------------------------------------------------------
# Multiply-add (AVX-512 VNNI): a both-ternary step in 32-bit counters with one operation fewer.
#
# A both-ternary step adds ``2 popcount(x & m) - popcount(m)`` (``both_ternary_vectors``). LLVM's
# lowering of the term is 7 vector operations per 512 bits: ``vpandd`` (m), ``vpternlogd`` (x & m),
# two ``vpopcntd``, ``vpsubd``, and the doubling and its add (two ``vpaddd``), against 3 for a
# binary step (``vpxord``, ``vpopcntd``, ``vpaddd``); on Zen 4, whose four vector pipes take each
# 512-bit operation in two halves, 7/3 = 2.33 was the measured cost of the 256-channel 3x3 conv
# against its binary twin. ``vpdpwssd`` with a constant 2 adds the doubled count of the mismatches
# in one operation (a popcount's upper 16 bits are 0): 6 operations a step. It runs on the pipes
# the popcounts use, two of the four: three of the six operations there, three elsewhere (two
# multiply-adds a step, of both words' halfword popcounts, overload them: see the pairs section).
# Measured on Zen 4, kernels alone, 1 thread: the 256-channel 3x3 conv at 14x14 1.97x its binary
# twin (was 2.30x), at 64 channels 56x56 1.84x (was 2.04x), exact.

def _multiply_add_step_funcs(lanes: int, index_dtype: str):
    """The both-ternary popcount step (``popcount_step_funcs``) in 32-bit counters: ``acc -
    popcount(m)``, then ``vpdpwssd`` adds ``2 popcount(x & m)``."""
    bits = 32 * lanes

    def multiply_add(words, acc):
        signs, both = words
        counts = lambda word: tirx.reinterpret(f"int32x{lanes}", tirx.popcount(word))  # noqa: E731
        rest = acc.vload([0], f"int32x{lanes}") - counts(both)
        total = T.call_llvm_pure_intrin(f"int32x{lanes}", f"llvm.x86.avx512.vpdpwssd.{bits}", rest,
                                        tirx.reinterpret(f"int16x{2 * lanes}", counts(signs & both)),
                                        tirx.Broadcast(tirx.const(2, "int16"), 2 * lanes))
        T.buffer_store(acc, total, [tirx.Ramp(tirx.IntImm(index_dtype, 0), tirx.IntImm(index_dtype, 1), lanes)])

    return popcount_step_funcs(lanes, index_dtype, multiply_add, form="both_ternary", vectors=both_ternary_vectors)


MULTIPLY_ADD_LANES = (4, 8, 16)  # vpdpwssd on 128, 256 (AVX512-VL) and 512 bits


def multiply_add_step_intrin(lanes: int, index_dtype: str) -> str:
    return register_intrinsic(f"bnn_word_step_{lanes}_{index_dtype}_both_ternary",
                              lambda: _multiply_add_step_funcs(lanes, index_dtype))


def multiply_adds(unit: VectorUnit, lanes: int, form: str | None) -> bool:
    """Whether a tile of ``lanes`` counting ``form`` steps in 32-bit counters on ``unit`` takes the
    multiply-add step. Like narrow counters, it needs the padded input in a pass of its own
    (``conv_choices``): the padding computed per task cannot be placed around a tensorized step."""
    return form == "both_ternary" and unit.word_multiply_add and lanes in MULTIPLY_ADD_LANES


def word_step(unit: VectorUnit, lanes: int, form: str | None, index_dtype: str) -> str | None:
    """The tensor intrinsic of a step in 32-bit counters, or None where LLVM's lowering of the
    term is the implementation (all but ``multiply_adds``)."""
    return multiply_add_step_intrin(lanes, index_dtype) if multiply_adds(unit, lanes, form) else None


# --------------------------------------------------------------------------------------------
# Halfword counters (NEON): the byte counts of ``cnt``/``vcnt.8`` pairwise-added into 16-bit
# lanes per step, widened to the 32-bit total once per chunk.
#
# A 32-bit lane's popcount on NEON is ``cnt`` (a count per byte), then two pairwise widening adds:
# bytes -> halfwords (``uaddlp .8h``/``vpaddl.u8``), halfwords -> words added into the accumulator
# (``uadalp .4s``/``vpadal.u16``); with ``eor`` that is 4 NEON operations per 128 bits and step.
# Halfword counters keep the pairs as they come: per step, ``eor``, ``cnt`` and one accumulating
# pairwise add of the byte counts into the halfword counters (``uadalp .8h``/``vpadal.u8``): 3.
# Each halfword of a 32-bit lane gains at most 16 per word (two bytes of 8 bits), so 4095 steps
# stay below 65536; the chunk's two halfwords of a lane are summed into the 32-bit total by one
# pairwise add (``uadalp .4s``/``vpaddl.u16``) at the chunk's end. The reductions of real layers
# (a 3x3 conv over 512 channels: 144 steps; a dense over 25088 inputs: 784) are one chunk.

MAX_HALFWORD_CHUNK_STEPS = 4095  # 16 per step and halfword counter: 4095 * 16 = 65520 < 65536


def halfword_chunk_steps(form: str) -> int:
    """Steps a halfword counter takes before it could carry: each word of a step adds at most 16."""
    return MAX_HALFWORD_CHUNK_STEPS // (2 if form == "both_ternary" else 1)


def pairwise_widen(flavour: str, values, acc=None):
    """NEON's pairwise widening add of ``values`` (uintNx2L -> uint2NxL), added into ``acc``
    where given: ``uaddlp``/``uadalp`` on aarch64 (LLVM folds the add of a ``uaddlp`` into
    ``uadalp``), ``vpaddl``/``vpadal`` on armv7."""
    dtype = values.ty.dtype
    wide = f"uint{2 * dtype.bits}x{dtype.lanes // 2}"
    if flavour == "armv7":
        if acc is None:
            return T.call_llvm_pure_intrin(wide, "llvm.arm.neon.vpaddlu", values)
        return T.call_llvm_pure_intrin(wide, "llvm.arm.neon.vpadalu", acc, values)
    if flavour != "aarch64":
        raise ValueError(f"no pairwise widening add for NEON flavour {flavour!r}")
    widened = T.call_llvm_pure_intrin(wide, "llvm.aarch64.neon.uaddlp", values)
    return widened if acc is None else acc + widened


def _halfword_step_funcs(lanes: int, index_dtype: str, flavour: str, form: str = "xor"):
    """The popcount step (``popcount_step_funcs``) implemented with halfword counters (see the
    section's comment): ``acc`` holds two 16-bit counters per 32-bit lane."""

    def halfword_counts(words, acc):
        counters = tirx.reinterpret(f"uint16x{2 * lanes}", acc.vload([0], f"int32x{lanes}"))
        for word in words:
            counts = tirx.popcount(tirx.reinterpret(f"uint8x{4 * lanes}", word))
            counters = pairwise_widen(flavour, counts, counters)
        ramp = tirx.Ramp(tirx.IntImm(index_dtype, 0), tirx.IntImm(index_dtype, 1), lanes)
        T.buffer_store(acc, tirx.reinterpret(f"int32x{lanes}", counters), [ramp])

    return popcount_step_funcs(lanes, index_dtype, halfword_counts, form=form)


def _halfword_finish_funcs(lanes: int, index_dtype: str, flavour: str, minus_from: int = 0):
    """The finish summing the two halfword counters of each lane of ``part``; with ``minus_from``
    (both ternary: ``32 * steps`` of the chunk) the counters hold ``minus_from - part``, and it
    adds ``minus_from - their sum``."""

    def halfword_sums(part, acc):
        halves = tirx.reinterpret(f"uint16x{2 * lanes}", part.vload([0], f"int32x{lanes}"))
        total = acc.vload([0], f"int32x{lanes}")
        if minus_from:
            counts = tirx.reinterpret(f"int32x{lanes}", pairwise_widen(flavour, halves))
            total = total + (tirx.Broadcast(tirx.const(minus_from, "int32"), lanes) - counts)
        else:
            total = tirx.reinterpret(f"int32x{lanes}",
                                     pairwise_widen(flavour, halves, tirx.reinterpret(f"uint32x{lanes}", total)))
        T.buffer_store(acc, total, [tirx.Ramp(tirx.IntImm(index_dtype, 0), tirx.IntImm(index_dtype, 1), lanes)])

    return _finish_funcs(lanes, index_dtype, halfword_sums)


def halfword_step_intrin(lanes: int, index_dtype: str, flavour: str, form: str = "xor") -> str:
    suffix = "" if form == "xor" else f"_{form}"
    return register_intrinsic(f"bnn_halfword_step_{flavour}_{lanes}_{index_dtype}{suffix}",
                              lambda: _halfword_step_funcs(lanes, index_dtype, flavour, form))


def halfword_finish_intrin(lanes: int, index_dtype: str, flavour: str, minus_from: int = 0) -> str:
    suffix = f"_minus_from_{minus_from}" if minus_from else ""
    return register_intrinsic(f"bnn_halfword_finish_{flavour}_{lanes}_{index_dtype}{suffix}",
                              lambda: _halfword_finish_funcs(lanes, index_dtype, flavour, minus_from))


# --------------------------------------------------------------------------------------------
# Position pairs (AVX-512 BITALG): two output positions per 32-bit lane where a tap is one word
# of at most 16 channels and both operands are ternary.
#
# A conv over C <= 16 channels (a CIFAR ResNet's first stage) reads one word per tap whose upper
# 16 bits are channel padding, 0 in activations and weights alike: half of every XOR and popcount
# is spent on zeros. With a popcount of 16-bit lanes (``vpopcntw``) the lane carries two output
# positions instead: the words of positions x and x+1 at the same tap joined into one,
# ``a[x] | a[x+1] << 16`` (one load of the pair's neighbouring words and one ``vpermw`` a plane),
# against each weight word doubled, ``w | w << 16`` (one ``vpshufb``); the 16-bit counts of the two
# halves are the two positions' counts. A pair costs the vector operations one position cost.
# The counts are added as they come into two 32-bit counters per pair, the mismatches and the
# taps where both are nonzero (``rfactor`` per chunk, as byte counters), each half at most 16 a
# step, so chunks of up to 4095 steps cannot carry into the other half; the finish splits the
# halves into the two positions' sums.
# Measured on Zen 4 (docs/performance.md), 3x3 convs over 16 channels at 32x32, 1 thread, pairs
# against 32-bit counters interleaved: both operands ternary 1.07x faster (16 output channels)
# and 1.29x (TTQ's 2 x 16); a single-popcount step (binary 0.88x, one operand ternary 0.96-0.97x)
# is slower in pairs, so only both-ternary convs take them (``pairs_apply``). A multiply-add of
# the halfword counts into one counter (VNNI ``vpdpwssd``) instead of the 32-bit path's shift and
# adds was 2-4 % slower on both-ternary convs over 32-256 channels: it competes with the
# popcounts for the same pipes.

MAX_PAIR_CHUNK_STEPS = 4095  # 16 per step and half: 4095 * 16 = 65520 < 65536
PAIR_MAX_CHANNELS = 16


class _PositionRow:
    """The words of one position of a pair's activation buffer, indexed by plane as a step's
    activation (``step_term``'s ``a``)."""

    def __init__(self, buffer, position):
        self.buffer, self.position = buffer, position

    def __getitem__(self, plane):
        return self.buffer[self.position, plane]


def double_halves(vector, lanes: int):
    """``w | w << 16`` of each 32-bit lane whose upper half is 0: its low half in both halves
    (one byte shuffle)."""
    halves = tirx.reinterpret(f"uint16x{2 * lanes}", vector)
    return tirx.reinterpret(f"uint32x{lanes}", tirx.Shuffle([halves], [2 * (k // 2) for k in range(2 * lanes)]))


def popcount_halves(word, lanes: int):
    """Per 32-bit lane of ``word``, the popcounts of its two 16-bit halves in those halves."""
    return tirx.reinterpret(f"uint32x{lanes}", tirx.popcount(tirx.reinterpret(f"uint16x{2 * lanes}", word)))


def _pair_step_funcs(lanes: int, index_dtype: str):
    """``(desc, impl)`` of one both-ternary reduction step of two neighbouring output positions x
    a vector of output channels, ``acc[p, o] += term(a[p], w[o])`` (``step_term``), implemented
    on pairs (see the section's comment): ``acc[0]`` receives both positions' mismatch counts in
    its halves and ``acc[1]`` their both-nonzero counts (only ``_pair_finish_funcs`` reads them)."""
    extent = lambda n: tirx.IntImm(index_dtype, n)  # noqa: E731
    form = "both_ternary"

    def declare():
        # sign and nonzero words of a tap: the two positions' words lie next to each other
        a = T.match_buffer(T.arg("a", T.handle()), (2, 2), "uint32", offset_factor=1, strides=[2, 1])
        w = T.match_buffer(T.arg("w", T.handle()), (2, lanes), "uint32", offset_factor=1,
                           strides=[tirx.Var("w_stride", index_dtype), 1])
        acc = T.match_buffer(T.arg("acc", T.handle()), (2, lanes), "int32", offset_factor=1, scope="local",
                             strides=[tirx.Var("acc_stride", index_dtype), 1])
        return a, w, acc

    def regions(a, w, acc):
        T.reads(acc[0:2, 0:lanes], a[0:2, 0:2], w[0:2, 0:lanes])
        T.writes(acc[0:2, 0:lanes])

    def popcounts(a, w, acc):
        with T.serial(extent(2)) as p:
            with T.serial(extent(lanes)) as o:
                with T.sblock("update"):
                    vp = T.axis.spatial(extent(2), p)
                    vo = T.axis.spatial(extent(lanes), o)
                    T.reads(acc[vp, vo], a[vp, 0:2], w[0:2, vo])
                    T.writes(acc[vp, vo])
                    T.buffer_store(acc, acc[vp, vo] + step_term(form, _PositionRow(a, vp), w, vo), [vp, vo])

    def pairs(a, w, acc):
        # the pair's four words as 16-bit halves (C <= 16: each word's upper half is 0), the low
        # halves of plane i's two words picked into every lane: one load and one shuffle a plane
        halves = tirx.reinterpret("uint16x8", a.vload([0, 0], "uint32x4"))
        copies = [halves] * max(1, lanes // 4)  # a shuffle picks among as many lanes as it makes
        joined = lambda i: tirx.reinterpret(f"uint32x{lanes}", tirx.Shuffle(copies, [2 * i, 4 + 2 * i] * lanes))  # noqa: E731
        weights = lambda plane: double_halves(w.vload([plane, 0], f"uint32x{lanes}"), lanes)  # noqa: E731
        both = joined(1) & weights(1)
        ramp = tirx.Ramp(tirx.IntImm(index_dtype, 0), tirx.IntImm(index_dtype, 1), lanes)
        # the term is 2 * popcount(x AND m) - popcount(m) (``bitserial.ternary_conv2d_dot``): the
        # mismatches and the both-nonzero taps in two counters, not ``step_vectors``' complement
        # form, whose NOT costs a copy of all ones a step
        for slot, word in enumerate([(joined(0) ^ weights(0)) & both, both]):
            row = tirx.IntImm(index_dtype, slot)
            counters = tirx.reinterpret(f"uint32x{lanes}", acc.vload([row, 0], f"int32x{lanes}"))
            T.buffer_store(acc, tirx.reinterpret(f"int32x{lanes}", counters + popcount_halves(word, lanes)), [row, ramp])

    return intrinsic_side(declare, regions, popcounts), intrinsic_side(declare, regions, pairs)


def _pair_finish_funcs(lanes: int, index_dtype: str):
    """``(desc, impl)`` of a chunk's finish for two positions, ``acc[p, o] += part[p, o]``: the
    implementation splits the halves of ``part[0]`` (mismatches) and ``part[1]`` (both-nonzero
    taps) into the two positions' sums, ``2 * mismatches - both``."""
    extent = lambda n: tirx.IntImm(index_dtype, n)  # noqa: E731

    def declare():
        part = T.match_buffer(T.arg("part", T.handle()), (2, lanes), "int32", offset_factor=1, scope="local",
                              strides=[tirx.Var("part_stride", index_dtype), 1])
        acc = T.match_buffer(T.arg("acc", T.handle()), (2, lanes), "int32", offset_factor=1, scope="local",
                             strides=[tirx.Var("acc_stride", index_dtype), 1])
        return part, acc

    def regions(part, acc):
        T.reads(acc[0:2, 0:lanes], part[0:2, 0:lanes])
        T.writes(acc[0:2, 0:lanes])

    def sums(part, acc):
        with T.serial(extent(2)) as p:
            with T.serial(extent(lanes)) as o:
                with T.sblock("update"):
                    vp = T.axis.spatial(extent(2), p)
                    vo = T.axis.spatial(extent(lanes), o)
                    T.reads(acc[vp, vo], part[vp, vo])
                    T.writes(acc[vp, vo])
                    T.buffer_store(acc, acc[vp, vo] + part[vp, vo], [vp, vo])

    def split(part, acc):
        const = lambda v: tirx.Broadcast(tirx.const(v, "uint32"), lanes)  # noqa: E731

        def halves(slot):
            packed = tirx.reinterpret(f"uint32x{lanes}", part.vload([tirx.IntImm(index_dtype, slot), 0], f"int32x{lanes}"))
            return [tirx.reinterpret(f"int32x{lanes}", h) for h in (packed & const(0xFFFF), packed >> const(16))]

        ramp = tirx.Ramp(tirx.IntImm(index_dtype, 0), tirx.IntImm(index_dtype, 1), lanes)
        for position, (mismatches, both) in enumerate(zip(halves(0), halves(1))):
            row = tirx.IntImm(index_dtype, position)
            T.buffer_store(acc, acc.vload([row, 0], f"int32x{lanes}") + (mismatches + mismatches - both), [row, ramp])

    return intrinsic_side(declare, regions, sums), intrinsic_side(declare, regions, split)


def pair_step_intrin(lanes: int, index_dtype: str) -> str:
    return register_intrinsic(f"bnn_pair_step_{lanes}_{index_dtype}_both_ternary",
                              lambda: _pair_step_funcs(lanes, index_dtype))


def pair_finish_intrin(lanes: int, index_dtype: str) -> str:
    return register_intrinsic(f"bnn_pair_finish_{lanes}_{index_dtype}_both_ternary",
                              lambda: _pair_finish_funcs(lanes, index_dtype))


def lay_out_pairs(sch: s_tir.Schedule, block, reduce: list, positions, channels, lanes: int):
    """``lay_out_tile`` for position pairs: the reduction loops ``reduce`` outside, then the
    pairs of the ``positions`` loop and the vectors of ``channels`` unrolled, each pair's two
    positions x ``lanes`` channels inside (the loop returned, to tensorize)."""
    pair_count, pair = sch.split(positions, [None, 2])
    vector_count, lane = sch.split(channels, [None, lanes])
    sch.reorder(*reduce, pair_count, vector_count, pair, lane)
    sch.unroll(pair_count)
    sch.unroll(vector_count)
    sch.decompose_reduction(block, reduce[0])
    return pair


def pairs_apply(sch: s_tir.Schedule, func, unit: VectorUnit, lanes: int, width_block: int) -> bool:
    """Whether a conv's tile counts position pairs (see the section's comment): a unit with a
    16-bit popcount, both operands ternary (the two-popcount step; a single-popcount step, whose
    word costs three operations, measured slower in pairs: the joins cost more than they save)
    over one word of at most 16 channels a tap, stride 1 along the width, an even number of
    positions per tile and full vectors of channels."""
    if not unit.halfword_popcount or width_block % 2 or lanes < unit.lanes:
        return False
    mismatches = sch.get_sblock("mismatches")
    if popcount_form(sch, mismatches) != "both_ternary":
        return False
    ry, rx, rc = extents(sch, sch.get_loops(mismatches)[-3:])
    attrs = func.attrs if func.attrs is not None else {}
    strides = [int(v) for v in attrs.get("bnn.strides", [1, 1])]
    taps = int(attrs.get("bnn.taps", 0))
    return rc == 1 and 0 < taps <= PAIR_MAX_CHANNELS * ry * rx and strides[-1] == 1


def chunk_loop(sch: s_tir.Schedule, reduce: list, max_steps: int = MAX_CHUNK_STEPS):
    """Regroup the reduction loops ``reduce`` (outermost first) into one loop of chunks, the
    loops inside it taking at most ``max_steps`` steps: the innermost loops that fit whole, the
    next one split by its largest divisor that fits; returns ``(chunk loop, steps per chunk)``."""
    sizes = extents(sch, reduce)
    steps, whole = 1, len(reduce)
    while whole > 0 and steps * sizes[whole - 1] <= max_steps:
        whole -= 1
        steps *= sizes[whole]
    if whole == 0:  # the whole reduction is one chunk
        outer, _ = sch.split(reduce[0], [1, None])
        return outer, steps
    inner = largest_divisor(sizes[whole - 1], max_steps // steps)
    outer, _ = sch.split(reduce[whole - 1], [None, inner])
    return (sch.fuse(*reduce[: whole - 1], outer) if whole > 1 else outer), steps * inner


def is_popcount(term) -> bool:
    return isinstance(term, tirx.Cast) and isinstance(term.value, tvm.ir.Call) and term.value.op.name == "tirx.popcount"


def popcount_form(sch: s_tir.Schedule, block) -> str | None:
    """The ``STEP_FORMS`` term that ``block`` adds per step, or None (a k-bit conv's weighted
    planes). Tensorizing checks the match to the letter."""
    value = sch.get(block).body.value
    term = getattr(value, "b", None)
    if (type(term).__name__ == "Sub" and type(term.a).__name__ == "Mul"
            and (is_popcount(term.a.a) or is_popcount(term.a.b)) and is_popcount(term.b)):
        # ``2 popcount((s ^ t) & m) - popcount(m)``; an attention context's ``2 popcount(a & v) -
        # popcount(a)`` is another term (no step of its own)
        doubled = (term.a.a if is_popcount(term.a.a) else term.a.b).value.args[0]
        masked_signs = type(doubled).__name__ == "BitwiseAnd" and type(doubled.a).__name__ == "BitwiseXor"
        return "both_ternary" if masked_signs else None
    if not is_popcount(term):
        return None
    word = term.value.args[0]
    if type(word).__name__ == "BitwiseXor":
        return "xor"
    if type(word).__name__ != "BitwiseAnd" or type(word.a).__name__ != "BitwiseXor":
        return None
    mask, data, weight = word.b, word.a.a, word.a.b
    if not all(hasattr(v, "source") and hasattr(v, "indices") for v in (mask, data, weight)):  # loads
        return None
    if mask.source.same_as(data.source):
        return "masked_data"
    return "masked_weight" if mask.source.same_as(weight.source) else None


def is_single_popcount(sch: s_tir.Schedule, block) -> bool:
    """Whether ``block`` adds one popcount of a ``STEP_FORMS`` word per step."""
    return popcount_form(sch, block) is not None


MAX_UNROLLED_TAPS = 7
# aarch64 (32 vector registers): a chunk's words and rows unrolled too, up to these many steps
# per kernel row and per chunk (the 64- and 128-channel 3x3 convs of ResNet-18); more (256
# channels: 72 steps) spilled and cost instructions
MAX_UNROLLED_ROW_STEPS = 12
MAX_UNROLLED_CHUNK_STEPS = 36


def unroll_taps(sch: s_tir.Schedule, ry, rx, rc, whole_chunk: bool = False) -> None:
    """A conv's steps in a chunk as rows of taps, words, then the kernel row's taps unrolled
    (up to ``MAX_UNROLLED_TAPS``): a tile's neighbouring positions read the same activation
    words at neighbouring taps, so in the unrolled taps LLVM loads each broadcast word once.
    Measured (NEON halfword counters, Cortex-A53 under qemu, the 3x3 64->64 56x56 layer): 5.13 M
    -> 4.67 M executed instructions; llvm-mca's estimate 0.0381 -> 0.0296 cycles per binary MAC.
    ``whole_chunk``: also the row's words and the rows, where few (``MAX_UNROLLED_*_STEPS``):
    no loop counters or address arithmetic between steps, the broadcasts shared across rows
    (the same layer's conv, tiles on the stack: 3.94 -> 3.54 M executed instructions)."""
    if int(sch.get(rx).extent) > MAX_UNROLLED_TAPS:
        return
    sch.reorder(rc, rx)
    sch.unroll(rx)
    row_steps = int(sch.get(rc).extent) * int(sch.get(rx).extent)
    if whole_chunk and row_steps <= MAX_UNROLLED_ROW_STEPS:
        sch.unroll(rc)
        if row_steps * int(sch.get(ry).extent) <= MAX_UNROLLED_CHUNK_STEPS:
            sch.unroll(ry)


MIN_HALFWORD_COUNTER_LANES = 2  # 64-bit NEON vectors (``cnt .8b``, ``uadalp .4h``) too


def narrow_counters(unit: VectorUnit, lanes: int, form: str | None) -> str:
    """The narrow counters ``count_mismatches`` keeps for a tile of ``lanes`` counting steps of
    ``form`` on ``unit``: "bytes", "halfwords" or "" (32-bit counters)."""
    if form is None:
        return ""
    if unit.byte_counters and lanes >= MIN_BYTE_COUNTER_LANES and (form != "both_ternary" or unit.byte_lookup):
        return "bytes"
    if unit.halfword_counters and lanes >= MIN_HALFWORD_COUNTER_LANES:
        return "halfwords"
    return ""


def count_mismatches(sch: s_tir.Schedule, block, lanes: int, spatial: int, reduction: int, unit: VectorUnit,
                     counters: str | None = None, unroll: bool = False) -> str:
    """The mismatch counts of a tile, as ``accumulate`` lays them out: in 32-bit accumulators,
    or on a unit with ``byte_counters`` (``halfword_counters``), in byte (halfword) counters per
    chunk, or position pairs in 16-bit halves ("pairs", ``count_pairs``; the rule decides, see
    ``pairs_apply``) (see the sections' comments). ``counters`` ("words", "bytes", "halfwords",
    "pairs"; a rule's knob) overrides the unit's choice; a block whose steps are no single popcount (a k-bit conv's
    weighted planes) counts in words, ``unroll``ed as ``accumulate_unrolled`` does. Returns how,
    for the kernel's plan."""
    form = popcount_form(sch, block)
    narrow = narrow_counters(unit, lanes, form)
    if counters is not None:
        narrow = "" if counters == "words" or form is None else counters
        if narrow == "bytes" and narrow_counters(unit, lanes, form) != "bytes":  # a both-ternary step needs lookups
            narrow = ""
    if not narrow:
        step = word_step(unit, lanes, form, str(sch.get(sch.get_loops(block)[-1]).loop_var.ty))
        how = "32-bit counters" + (", multiply-add" if step else "")
        if unroll:
            accumulate_unrolled(sch, block, lanes, reduction, step)
            return how + ", reduction partly unrolled"
        accumulate(sch, block, lanes, spatial, reduction, step)
        return how
    if narrow == "pairs":
        return count_pairs(sch, block, lanes, reduction)
    loops = sch.get_loops(block)
    max_steps = chunk_steps(form) if narrow == "bytes" else halfword_chunk_steps(form)
    chunk, chunk_size = chunk_loop(sch, loops[-reduction:], max_steps)
    partial = sch.rfactor(chunk, 0)  # [chunk, ...]: the narrow counters of each chunk
    sch.set_scope(partial, 0, "local")
    *positions, channels, chunk = sch.get_loops(block)[-(spatial + 1) :]
    lane = lay_out_tile(sch, block, [chunk], positions, channels, lanes)
    sch.set_scope(block, 0, "local")
    sch.compute_at(partial, chunk, preserve_unit_loops=True)
    steps = sum(int(var.iter_type) == tirx.IterVar.CommReduce for var in sch.get(partial).iter_vars)
    loops = sch.get_loops(partial)
    *part_positions, part_channels = loops[-(steps + spatial) : -steps]
    part_lane = lay_out_tile(sch, partial, loops[-steps:], part_positions, part_channels, lanes)
    if narrow == "halfwords" and steps == 3:
        unroll_taps(sch, *loops[-steps:], whole_chunk=unit.halfword_counters == "aarch64")
    index_dtype = str(sch.get(part_lane).loop_var.ty)
    minus_from = WORD_BITS * chunk_size if form == "both_ternary" else 0  # see step_vectors
    if narrow == "bytes":
        sch.tensorize(part_lane, byte_step_intrin(lanes, index_dtype, form))
        sch.tensorize(lane, byte_finish_intrin(lanes, str(sch.get(lane).loop_var.ty), minus_from))
        return "byte counters"
    flavour = unit.halfword_counters
    sch.tensorize(part_lane, halfword_step_intrin(lanes, index_dtype, flavour, form))
    sch.tensorize(lane, halfword_finish_intrin(lanes, str(sch.get(lane).loop_var.ty), flavour, minus_from))
    return "halfword counters"


def count_pairs(sch: s_tir.Schedule, block, lanes: int, reduction: int) -> str:
    """``count_mismatches`` in position pairs (the section's comment): per chunk of the
    reduction, each pair's counts in the halves of two 32-bit counters, split at the chunk's end."""
    loops = sch.get_loops(block)
    chunk, _ = chunk_loop(sch, loops[-reduction:], MAX_PAIR_CHUNK_STEPS)
    partial = sch.rfactor(chunk, 0)  # [chunk, ...]: the paired counters of each chunk
    sch.set_scope(partial, 0, "local")
    positions, channels, chunk = sch.get_loops(block)[-3:]
    pair = lay_out_pairs(sch, block, [chunk], positions, channels, lanes)
    sch.set_scope(block, 0, "local")
    sch.compute_at(partial, chunk, preserve_unit_loops=True)
    steps = sum(int(var.iter_type) == tirx.IterVar.CommReduce for var in sch.get(partial).iter_vars)
    loops = sch.get_loops(partial)
    part_positions, part_channels = loops[-(steps + 2) : -steps]
    part_pair = lay_out_pairs(sch, partial, loops[-steps:], part_positions, part_channels, lanes)
    sch.tensorize(part_pair, pair_step_intrin(lanes, str(sch.get(part_pair).loop_var.ty)))
    sch.tensorize(pair, pair_finish_intrin(lanes, str(sch.get(pair).loop_var.ty)))
    return "position pairs in 16-bit halves"


def keep_dot_apart(sch: s_tir.Schedule, dot, loop, lanes: int) -> None:
    """The integer result as its own (register) stage beside the thresholds, not inlined into
    the comparisons: TVM's simplifier would move its terms across ``<=`` and overflow on the
    unbounded thresholds (INT32_MIN/MAX)."""
    sch.compute_at(dot, loop, preserve_unit_loops=True)
    sch.set_scope(dot, 0, "local")
    if lanes > 1:
        *positions, channels = sch.get_loops(dot)[-2:]
        vector_count, lane = sch.split(channels, [None, lanes])
        sch.vectorize(lane)


def pack_words(sch: s_tir.Schedule, bits_block, pack_block, lanes: int) -> None:
    """Decisions (already computed at their word's loop) as one vector, the word packed by
    mask (tensorized)."""
    bit_loop = sch.get_loops(bits_block)[-1]
    if lanes > 1:
        sch.vectorize(bit_loop)
    sch.decompose_reduction(pack_block, sch.get_loops(pack_block)[-1])
    bit = sch.get_loops(pack_block)[-1]
    sch.tensorize(bit, pack_bits32_intrin(str(sch.get(bit).loop_var.ty)))


def has_block(sch: s_tir.Schedule, name: str) -> bool:
    try:
        sch.get_sblock(name)
        return True
    except (RuntimeError, ValueError, tvm.error.InternalError):
        return False


def place_padding(sch: s_tir.Schedule, unit: VectorUnit, where: str = "root", task=None) -> None:
    """The zero-padded copy of the input (of each bit plane), if the conv pads: in a pass of its
    own (``where="root"``, ``pad_rows``) or computed inside each parallel ``task`` ("task": the
    rows that task reads, some of them twice, but no second parallel region)."""
    if not has_block(sch, "pad_bits"):
        return
    if where == "task":
        sch.compute_at(sch.get_sblock("pad_bits"), task, preserve_unit_loops=True)
    else:
        pad_rows(sch, unit)


def pad_rows(sch: s_tir.Schedule, unit: VectorUnit) -> None:
    """The zero-padded copy of the input (of each bit plane), at root: rows in parallel, each
    row one vector loop."""
    pad = sch.get_sblock("pad_bits")
    *rows, x, c = sch.get_loops(pad)  # (plane,) image, row, column, word
    row = sch.fuse(*rows)
    parallel(sch, row, block_work(sch, pad))
    words = sch.fuse(x, c)
    (total,) = extents(sch, [words])
    width = largest_divisor(total, unit.lanes)
    if width > 1:
        _, inner = sch.split(words, [None, width])
        sch.vectorize(inner)


def transpose_out(sch: s_tir.Schedule, out, o_inner, x_inner, lanes: int, width_block: int, func,
                  tile_dtype: str = "int32") -> str:
    """The float NCHW epilogue of a tile: in-register transpose (tensorized) where it applies,
    else vectors over positions read back from the tile."""
    steps = epilogue_steps(func)
    if lanes >= 4 and width_block > 1:
        vector_count, lane = sch.split(o_inner, [None, lanes])
        try:
            index_dtype = str(sch.get(lane).loop_var.ty)
            intrin = tile_out_intrin(width_block, lanes, steps, index_dtype, tile_dtype, *kernel_activation(func))
            sch.tensorize(lane, intrin)
            sch.unroll(vector_count)
            return "register-transposed NCHW stores"
        except (RuntimeError, tvm.error.InternalError):
            if os.environ.get("BNN_STRICT_SCHEDULES"):
                raise
            o_inner = sch.fuse(vector_count, lane)
    sch.unroll(o_inner)
    if width_block > 1:
        sch.vectorize(x_inner)
    return "gathered NCHW stores"


def float_conv(sch: s_tir.Schedule, func, unit: VectorUnit) -> Scheduled:
    """A float conv (``schedules.float_conv``): the binary conv's tile with FMAs."""
    acc = sch.get_sblock("conv_acc")
    sch.transform_layout(acc, param_name(func, 1), lambda o, c, y, x: (c, y, x, o))
    flat = has_block(sch, "conv_tiles")  # a pointwise conv over flattened positions
    out = sch.get_sblock("conv_tiles" if flat else "conv_out")
    _, o, _, x = sch.get_loops(out)
    lanes, channel_block, width_block = tile(*extents(sch, [o, x]), unit, fewest_loads=True)
    parallel_loops = parallel_count(block_work(sch, acc), PARALLEL_MIN_TILE_WORK)
    if flat and parallel_loops:  # one "row" (the image): the tiles along it go parallel with it
        parallel_loops = 2
    _, o_outer, o_inner, x_inner = tile_nchw_out(sch, out, channel_block, width_block, parallel_loops)
    sch.compute_at(acc, o_outer, preserve_unit_loops=True)
    accumulate(sch, acc, lanes, spatial=2, reduction=3)
    epilogue = transpose_out(sch, out, o_inner, x_inner, lanes, width_block, func, tile_dtype="float32")
    try:
        pad = sch.get_sblock("pad_float")
    except (RuntimeError, ValueError, tvm.error.InternalError):
        pad = None
    if pad is not None:  # the padded input at root: planes in parallel, rows as vectors
        n, c, yy, xx = sch.get_loops(pad)
        parallel(sch, sch.fuse(n, c), block_work(sch, pad))
        (padded_width,) = extents(sch, [xx])
        vector = largest_divisor(padded_width, unit.lanes)
        if vector > 1:
            sch.vectorize(sch.split(xx, [None, vector])[1])
    if flat:
        flat_copies(sch, unit)
        epilogue += ", positions flattened"
    plan = f"float conv: {width_block} positions x {channel_block} channels of FMA accumulators, {lanes} lanes, {epilogue}"
    return Scheduled(sch.mod["main"], plan, {1: (1, 2, 3, 0)})


def flat_copies(sch: s_tir.Schedule, unit: VectorUnit) -> None:
    """A pointwise conv's copies (``float_conv.pointwise_conv2d``) at root: the input into
    flattened, padded rows and the tiles' rows back out, one channel per iteration, in parallel
    when large enough; the inner loop over positions left to LLVM (a copy of a row)."""
    for name in ("flat_positions", "conv_out"):
        block = sch.get_sblock(name)
        n, c, *positions = sch.get_loops(block)
        channel = sch.fuse(n, c)
        parallel(sch, channel, block_work(sch, block))
        if len(positions) > 1:
            sch.fuse(*positions)


def param_name(func: tirx.PrimFunc, position: int) -> str:
    return func.params[position].name


# --------------------------------------------------------------------------------------------
# Kernels


def epilogue_steps(func) -> tuple[str, ...]:
    """The per-channel float ops a float-output conv finishes its tile with: its
    ``bnn.epilogue`` (``relay_passes.fold_float_epilogues``), or for a ``binary_conv2d`` the
    weight scale's multiply when it has one more parameter than data, weight, correction
    (table, ycls, xcls; a ``multibit_conv2d``'s offsets) and out."""
    if func.attrs is not None and "bnn.epilogue" in func.attrs:
        return tuple(str(func.attrs["bnn.epilogue"]).split(","))
    op = kernel_op(func)
    if op == "binary_conv2d":  # data, weights, table, ycls, xcls, out
        return ("multiply",) * (len(func.params) - 6)
    if op == "multibit_conv2d":  # data, weights, offsets, out
        return ("multiply",) * (len(func.params) - 4)
    if op == "ternary_conv2d":  # planes, weights, out: no correction
        return ("multiply",) * (len(func.params) - 3)
    return ()


def relayout_conv_constants(sch: s_tir.Schedule, func) -> dict[int, tuple[int, ...]]:
    """Weights ``[OC, KH, KW, CW] -> [KH, KW, CW, OC]`` (a vector of output channels is one load;
    ternary weights' planes alike)
    (the border correction table is channels-last already, a k-bit conv's per-channel offsets
    need none); returns the permutations made, for ``Scheduled.relayouts``."""
    mismatches = sch.get_sblock("mismatches")
    if len(func.params[1].shape) == 5:  # ternary weights: a tap's sign and nonzero vectors adjacent
        sch.transform_layout(mismatches, param_name(func, 1), lambda p, o, y, x, c: (y, x, c, p, o))
        relayouts = {1: (2, 3, 4, 0, 1)}
    else:
        sch.transform_layout(mismatches, param_name(func, 1), lambda o, y, x, c: (y, x, c, o))
        relayouts = {1: (1, 2, 3, 0)}
    return relayouts


def tile_nchw_out(sch: s_tir.Schedule, out, channel_block, width_block: int, parallel_loops: int):
    """Tile an NCHW output block: per image row, tiles of ``width_block`` positions x
    ``channel_block`` channels (an int, or a design space's sampled choice), the first
    ``parallel_loops`` of (rows, column blocks, channel blocks) fused into the parallel loop.
    Returns ``(task, tile loop, o_inner, x_inner)``: the parallel task's loop, and the loop the
    tile is computed at."""
    n, o, y, x = sch.get_loops(out)
    sch.reorder(n, y, x, o)
    row = sch.fuse(n, y)
    x_outer, x_inner = sch.split(x, [None, width_block])
    o_outer, o_inner = sch.split(o, [None, channel_block])
    sch.reorder(row, x_outer, o_outer, o_inner, x_inner)
    task = parallel_loop(sch, [row, x_outer, o_outer], parallel_loops)
    return task, (task if parallel_loops == 3 else o_outer), o_inner, x_inner


def kernel_activation(func) -> tuple[int, float | None]:
    """``(levels, activation_scale)`` of a k-bit conv (``bitserial.activation_value``): DoReFa
    divides its integer result by L, a ``Quant``'s multiplies it by its scale; ``(1, None)`` for
    binary kernels."""
    attrs = func.attrs if func.attrs is not None else {}
    levels = int(attrs["bnn.levels"]) if "bnn.levels" in attrs else 1
    return levels, float(attrs["bnn.activation_scale"]) if "bnn.activation_scale" in attrs else None


def kernel_op(func) -> str:
    return str(func.attrs.get("bnn.op", "")) if func.attrs is not None else ""


def is_multibit(func) -> bool:
    """Whether the kernel is a conv on k-bit planes (``bitserial.multibit_conv2d_dot``)."""
    return kernel_op(func).startswith("multibit_")


def integer_result(sch: s_tir.Schedule, func):
    """The block finishing the integer result (of a conv or dense) from its mismatch counts."""
    family = kernel_op(func).split("_")[0]  # binary, multibit, ternary
    kind = "conv2d" if "_conv2d" in kernel_op(func) else "dense"
    return sch.get_sblock(f"{family}_{kind}_dot")


def count_nonzeros(sch: s_tir.Schedule) -> None:
    """A ternary kernel's nonzero counts per position (``bitserial.ternary_conv2d_dot``), once
    for all output channels: at root, rows in parallel."""
    try:
        block = sch.get_sblock("nonzeros")
    except (RuntimeError, ValueError, tvm.error.InternalError):
        return
    kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
    spatial = [loop for loop, kind in zip(sch.get_loops(block), kinds) if kind == tirx.IterVar.DataPar]
    rows = sch.fuse(*spatial[:2]) if len(spatial) > 1 else spatial[0]
    parallel(sch, rows, block_work(sch, block))


# --------------------------------------------------------------------------------------------
# Rules: one per kernel kind whose schedule has knobs (binary and k-bit convs, sign-packs;
# denses and attention: ``RowKnobs`` below).
#
# A rule is the kind's schedule written once, its choices taken from a knobs object:
# ``defaults(sch, func, unit)`` gives the hand choices, and the hand schedule is the rule at its
# defaults (``KERNELS``). ``schedules.tuning`` turns the same rule into MetaSchedule design
# spaces: one design per setting of the structural knobs ``choices`` enumerates (a design that
# tensorizes must know its tile shape), the hand defaults first, each applied with
# ``space=True``, which draws the sampled knobs with MetaSchedule sampling instructions whose
# decisions are the knobs' values. The first design at its own decisions *is* the hand schedule
# (``tests/test_tune.py`` checks the IR is the same), so tuned and untuned schedules
# cannot drift apart.

PARALLEL_LOOPS = {0: "nothing", 1: "rows", 2: "rows x column blocks", 3: "rows x column blocks x channel blocks"}


@dataclass(frozen=True)
class Rule:
    """A kernel kind's schedule: ``apply(sch, func, unit, knobs=None, space=False)`` schedules
    (``knobs`` None: the ``defaults``), ``defaults(sch, func, unit)`` are the hand choices,
    ``choices(sch, func, unit)`` the structural knob settings a design space enumerates, and
    ``relayout(sch, func)`` the constant relayouts every setting makes (None: none)."""

    apply: Callable
    defaults: Callable
    choices: Callable
    relayout: Callable | None = None


def choose(sch: s_tir.Schedule, value: int, candidates: list[int], space: bool):
    """``value``; in a design space (``space``), a choice among ``candidates`` sampled by
    MetaSchedule (``sample_categorical``) whose decision is ``value``."""
    candidates = sorted(set(candidates) | {value})
    if not space or len(candidates) < 2:
        return value
    return sch.sample_categorical(candidates, [1 / len(candidates)] * len(candidates),
                                  decision=candidates.index(value))


@dataclass(frozen=True)
class ConvKnobs:
    """The choices of a binary (ternary, k-bit) conv's schedule, float or packed output."""

    lanes: int  # output channels per vector register
    width_block: int  # output positions per register tile
    channel_block: int  # output channels per tile (sampled in a space; a word-aligned threshold tile is one word)
    parallel: int  # outer loops fused into the parallel loop (PARALLEL_LOOPS)
    counters: str  # mismatch counters: "words" (32-bit), "bytes", "halfwords" or "pairs" (``count_mismatches``)
    pad: str = "root"  # the zero-padded input: "root" (a pass of its own) or "task" (per parallel task)
    # 32-bit counters: the kernel columns and channel words split, the inner parts (sampled) unrolled
    unroll: bool = False
    # a word-aligned threshold conv's words per tile: None, one (the word loop unsplit); a
    # number, the word loop split by it (sampled in a space)
    words: int | None = None


def conv_out_block(sch: s_tir.Schedule):
    """A float-output conv's output block: a convert (and epilogue), or a table lookup."""
    return sch.get_sblock("table_lookup" if has_block(sch, "table_lookup") else "dot_float")


def conv_shape(sch: s_tir.Schedule, threshold: bool) -> tuple[int, int]:
    """``(output channels, output width)`` of a conv kernel."""
    channels = extents(sch, [sch.get_loops(sch.get_sblock("mismatches"))[3]])[0]
    if threshold:
        return channels, extents(sch, [sch.get_loops(sch.get_sblock("threshold_pack"))[2]])[0]
    return channels, extents(sch, [sch.get_loops(conv_out_block(sch))[3]])[0]


def conv_knobs(sch: s_tir.Schedule, func, unit: VectorUnit, threshold: bool = False) -> ConvKnobs:
    """The hand choices (``tile``; a threshold conv's tile one word where the channels are
    whole words): rows in parallel where the kernel is worth it, the unit's counters, the
    padded input in its own pass."""
    channels, width = conv_shape(sch, threshold)
    word_aligned = threshold and channels % WORD_BITS == 0
    lanes, channel_block, width_block = tile(channels, width, unit, WORD_BITS if word_aligned else None,
                                             vectors=ttq_vectors(sch, channels, unit))
    mismatches = sch.get_sblock("mismatches")
    counters = narrow_counters(unit, lanes, popcount_form(sch, mismatches)) or "words"
    if not threshold and pairs_apply(sch, func, unit, lanes, width_block):
        counters = "pairs"
    return ConvKnobs(lanes, width_block, channel_block, parallel_count(block_work(sch, mismatches), PARALLEL_MIN_TILE_WORK),
                     counters)


def channel_blocks(channels: int, lanes: int, width_block: int, unit: VectorUnit) -> list[int]:
    """Channels per tile a design space samples: whole vectors that divide the channels, the
    tile within the unit's accumulator registers and TVM's stack-allocation limit."""
    most = max(1, unit.accumulators // width_block)
    return [lanes * v for v in range(1, most + 1)
            if channels % (lanes * v) == 0 and 4 * lanes * v * width_block < MAX_STACK_BYTES] or [lanes]


def lane_choices(channels: int, unit: VectorUnit) -> list[int]:
    """The unit's full vector width and half of it, where they divide ``channels``."""
    widest = vector_lanes(channels, unit)
    return sorted({widest, widest // 2} if widest >= 8 else {widest}, reverse=True)


def width_choices(width: int, budget: int) -> list[int]:
    """Width tiles that divide the output width (no loop tails); one position only as a last resort."""
    found = [d for d in range(2, min(width, budget) + 1) if width % d == 0]
    return found or [1]


def counter_choices(unit: VectorUnit, lanes: int, pad: str) -> tuple[str, ...]:
    """The counters a tile of ``lanes`` may count in on ``unit`` (``narrow_counters``): narrow
    counters take the padding in its own pass (their ``rfactor`` needs the counting block first
    in its task)."""
    narrow = narrow_counters(unit, lanes, "xor") if pad == "root" else ""
    return (narrow, "words") if narrow else ("words",)


def conv_choices(sch: s_tir.Schedule, func, unit: VectorUnit, threshold: bool = False) -> list[ConvKnobs]:
    """Every combination of a conv's structural knobs: lanes, width tile, parallel loops (a
    threshold conv whose last word reads clamped channels: rows and column blocks at most),
    padding placement, counters; the channel block starts at two vectors where they fit, 32-bit
    counters unroll a sampled part of the reduction, a word-aligned threshold tile takes a
    sampled number of words."""
    channels, width = conv_shape(sch, threshold)
    word_aligned = threshold and channels % WORD_BITS == 0
    padded = has_block(sch, "pad_bits")
    form = popcount_form(sch, sch.get_sblock("mismatches"))
    ttq = has_block(sch, "ttq_difference")
    found = []
    for lanes in lane_choices(channels, unit):
        pads = ("root", "task") if padded and not multiply_adds(unit, lanes, form) else ("root",)
        for width_block in width_choices(width, unit.accumulators):
            blocks = channel_blocks(channels, lanes, width_block, unit)
            channel_block = WORD_BITS if word_aligned else max(b for b in blocks if b <= 2 * lanes)
            if ttq:  # at least one interleave block of outputs (``ttq_out_tile``)
                channel_block = max(channel_block, 2 * bitserial.halves_block(channels // 2))
            for parallel_loops in ((1, 2, 3) if word_aligned or not threshold else (1, 2)):
                for pad in pads:
                    for counters in counter_choices(unit, lanes, pad):
                        found.append(ConvKnobs(lanes, width_block, channel_block, parallel_loops, counters, pad,
                                               unroll=counters == "words", words=1 if word_aligned else None))
    return found


def conv_float(sch: s_tir.Schedule, func, unit: VectorUnit, knobs: ConvKnobs | None = None,
               space: bool = False) -> Scheduled:
    """``binary_conv2d`` (and on k-bit planes, ``multibit_conv2d``): int32 tile in registers,
    finished as vectors of channels, transposed, float NCHW out."""
    knobs = knobs or conv_knobs(sch, func, unit)
    lanes, width_block = knobs.lanes, knobs.width_block
    relayouts = relayout_conv_constants(sch, func)
    mismatches, dot = sch.get_sblock("mismatches"), integer_result(sch, func)
    table = has_block(sch, "table_lookup")
    out = conv_out_block(sch)
    channels, _ = conv_shape(sch, threshold=False)
    ttq = has_block(sch, "ttq_difference")
    if ttq:  # whole interleave blocks of outputs: a structural knob, not sampled
        out_block, out_lanes = ttq_out_tile(channels // 2, knobs.channel_block, lanes)
    else:
        channel_block = choose(sch, knobs.channel_block, channel_blocks(channels, lanes, width_block, unit), space)
        out_block, out_lanes = channel_block, lanes
    task, tile_loop, o_inner, x_inner = tile_nchw_out(sch, out, out_block, width_block, knobs.parallel)
    if ttq:  # b*P - a*N of the tile's channels, in registers, from the tile of the halves
        keep_dot_apart(sch, sch.get_sblock("ttq_difference"), tile_loop, out_lanes)
    keep_dot_apart(sch, dot, tile_loop, lanes)
    sch.compute_at(mismatches, tile_loop, preserve_unit_loops=True)
    counters = count_mismatches(sch, mismatches, lanes, 2, 3, unit, knobs.counters, knobs.unroll)
    if table:  # a per-channel float function tabulated at compile time: one lookup per output
        sch.unroll(o_inner)
        if width_block > 1:
            sch.vectorize(x_inner)
        epilogue = "table lookups, NCHW vector stores"
    else:
        epilogue = transpose_out(sch, out, o_inner, x_inner, out_lanes, width_block, func,
                                 tile_dtype="float32" if ttq else "int32")
    if ttq:
        epilogue = f"b*P - a*N of {out_block} channels, {epilogue}"
    place_padding(sch, unit, knobs.pad, task)
    count_nonzeros(sch)
    plan = (f"conv: {width_block} positions x {knobs.channel_block} channels in registers, {lanes} lanes, {counters}, "
            f"{epilogue}")
    return Scheduled(sch.mod["main"], plan, relayouts)


def ttq_vectors(sch: s_tir.Schedule, channels: int, unit: VectorUnit) -> int | None:
    """The channel vectors of a TTQ conv's tile over its ``channels`` halves: one interleave
    block of outputs (``ttq_out_tile``), its ``b * P`` and ``a * N`` side by side, so each
    activation word loaded serves both; None for other kernels."""
    if not has_block(sch, "ttq_difference"):
        return None
    lanes = vector_lanes(channels, unit)
    vectors = 2 * bitserial.halves_block(channels // 2) // lanes
    return vectors if vectors > 1 else None  # a vector holds whole blocks: the plain tile's choice


def ttq_out_tile(channels: int, halves_block: int, lanes: int) -> tuple[int, int]:
    """``(output channels per tile, their vector lanes)`` of a TTQ conv (``bitserial.ttq_conv2d_float``)
    whose tile of halves is ``halves_block`` channels: half as many outputs, in whole interleave
    blocks (``bitserial.halves_block``; a part of a block would make the tile read the
    halves between its positive and negative channels too)."""
    block = bitserial.halves_block(channels)
    blocks = max(1, halves_block // 2 // block)
    while channels % (blocks * block):
        blocks -= 1
    out_block = blocks * block
    return out_block, min(lanes, block)  # a vector of outputs within one block: contiguous P and N


def conv_threshold(sch: s_tir.Schedule, func, unit: VectorUnit, knobs: ConvKnobs | None = None,
                   space: bool = False) -> Scheduled:
    """``binary_conv2d_threshold`` (``multibit_conv2d_threshold``): per 32 output channels, tile
    -> thresholds -> packed word."""
    knobs = knobs or conv_knobs(sch, func, unit, threshold=True)
    lanes = knobs.lanes
    relayouts = relayout_conv_constants(sch, func)
    mismatches, dot = sch.get_sblock("mismatches"), integer_result(sch, func)
    bits = sch.get_sblock("threshold_bits")
    pack = sch.get_sblock("threshold_pack")
    n, y, x, cw, _ = sch.get_loops(pack)
    channels, _ = conv_shape(sch, threshold=True)
    word_aligned = channels % WORD_BITS == 0
    row = sch.fuse(n, y)
    x_outer, x_inner = sch.split(x, [None, knobs.width_block])
    # Word-aligned channels: a tile accumulates exactly one word's 32 channels (or ``words``
    # of them) at the word loop, or the parallel loop it is fused into. Otherwise the last word
    # reads clamped channels, so the tile covers all channels of its positions, a channel
    # block at a time.
    words = [cw]
    if word_aligned and knobs.words is not None:
        most = max(1, unit.accumulators // (knobs.width_block * (WORD_BITS // lanes)))
        (count,) = extents(sch, [cw])
        words = sch.split(cw, sch.sample_perfect_tile(cw, n=2, max_innermost_factor=max(most, knobs.words),
                                                       decision=[count // knobs.words, knobs.words])
                          if space else [None, knobs.words])
    sch.reorder(row, x_outer, *words, x_inner)
    task = parallel_loop(sch, [row, x_outer, words[0]] if word_aligned else [row, x_outer], knobs.parallel)
    if word_aligned:
        tile_loop = task if knobs.parallel == 3 else words[0]
    else:
        tile_loop = task if knobs.parallel == 2 else x_outer
    sch.compute_at(bits, x_inner, preserve_unit_loops=True)
    keep_dot_apart(sch, dot, x_inner if word_aligned else tile_loop, lanes if word_aligned else 1)
    sch.compute_at(mismatches, tile_loop, preserve_unit_loops=True)
    if not word_aligned:
        o = sch.get_loops(mismatches)[-4]
        channel_block = choose(sch, knobs.channel_block, channel_blocks(channels, lanes, knobs.width_block, unit), space)
        o_outer, _ = sch.split(o, [None, channel_block])
        loops = sch.get_loops(mismatches)
        sch.reorder(o_outer, loops[-6])  # channel blocks outside the positions
    counters = count_mismatches(sch, mismatches, lanes, 2, 3, unit, knobs.counters, knobs.unroll)
    pack_words(sch, bits, pack, unit.lanes)
    place_padding(sch, unit, knobs.pad, task)
    count_nonzeros(sch)
    plan = (f"conv+threshold: {knobs.width_block} positions x {knobs.channel_block} channels, {lanes} lanes, "
            f"{counters}, mask-packed words")
    return Scheduled(sch.mod["main"], plan, relayouts)


CONV_FLOAT = Rule(conv_float, conv_knobs, conv_choices, relayout_conv_constants)
CONV_THRESHOLD = Rule(conv_threshold, functools.partial(conv_knobs, threshold=True),
                      functools.partial(conv_choices, threshold=True), relayout_conv_constants)


def relayout_dense_weights(sch: s_tir.Schedule, func) -> dict[int, tuple[int, ...]]:
    """Dense weights ``[O, KW] -> [KW, O]`` (a vector of outputs is one load; ternary weights'
    planes alike); returns the permutation made, for ``Scheduled.relayouts``."""
    mismatches = sch.get_sblock("mismatches")
    if len(func.params[1].shape) == 3:
        sch.transform_layout(mismatches, param_name(func, 1), lambda p, o, k: (k, p, o))
        return {1: (2, 0, 1)}
    sch.transform_layout(mismatches, param_name(func, 1), lambda o, k: (k, o))
    return {1: (1, 0)}


# --------------------------------------------------------------------------------------------
# Row tiles: a dense's batch rows x outputs, attention's queries x keys (or x head features),
# accumulated in vector registers over the words of the reduction. One rule per output form:
# float (``DENSE_FLOAT``, ``ATTENTION_SCORES``: a convert, epilogue or table lookup per output)
# and packed (``DENSE_THRESHOLD``, ``ATTENTION_BITS``: thresholds, 32 outputs a word), the dense
# kinds counting in the unit's narrow counters, the attention kinds in 32-bit counters.


@dataclass(frozen=True)
class RowKnobs:
    """The choices of a rows x outputs tile's schedule."""

    lanes: int  # outputs per vector register
    row_block: int  # rows per tile (sampled in a space)
    # outputs per tile (sampled in a space; a word-aligned threshold tile is one word)
    out_block: int
    parallel: int  # 1: the task loop (row blocks x output blocks, or words) in parallel; 0: serial
    counters: str  # mismatch counters: "words" (32-bit), "bytes" or "halfwords" (``count_mismatches``)
    unroll: bool = False  # 32-bit counters: a sampled inner part of the words unrolled


def row_out_block(sch: s_tir.Schedule):
    """A float-output row kernel's output block: a dense's convert (epilogue) or table lookup,
    attention's scores."""
    return sch.get_sblock("scores_float") if has_block(sch, "scores_float") else conv_out_block(sch)


def row_shape(sch: s_tir.Schedule, threshold: bool) -> tuple[int, int]:
    """``(outputs, rows)`` of a row kernel (outputs: a dense's output features, attention's keys)."""
    outputs = extents(sch, [sch.get_loops(sch.get_sblock("mismatches"))[-2]])[0]
    if threshold:
        return outputs, extents(sch, [sch.get_loops(sch.get_sblock("threshold_pack"))[-3]])[0]
    return outputs, extents(sch, [sch.get_loops(row_out_block(sch))[-2]])[0]


def row_tile(outputs: int, rows: int, unit: VectorUnit, threshold: bool) -> tuple[int, int, int]:
    """``tile``'s ``(lanes, out_block, row_block)`` for rows stored as they are; a threshold
    tile whose outputs are whole words is one word."""
    aligned = threshold and outputs % WORD_BITS == 0
    return tile(outputs, rows, unit, WORD_BITS if aligned else None, transposed=False,
                vectors=WORD_BITS // vector_lanes(outputs, unit) if aligned else None)


def row_knobs(sch: s_tir.Schedule, func, unit: VectorUnit, threshold: bool = False, narrow: bool = True) -> RowKnobs:
    """The hand choices: ``tile``'s register tile, the task loop in parallel where the kernel is
    worth it, the unit's counters (``narrow``; else 32-bit)."""
    outputs, rows = row_shape(sch, threshold)
    lanes, out_block, row_block = row_tile(outputs, rows, unit, threshold)
    mismatches = sch.get_sblock("mismatches")
    counters = (narrow_counters(unit, lanes, popcount_form(sch, mismatches)) if narrow else "") or "words"
    return RowKnobs(lanes, row_block, out_block, parallel_count(block_work(sch, mismatches), PARALLEL_MIN_TILE_WORK),
                    counters)


def row_choices(sch: s_tir.Schedule, func, unit: VectorUnit, threshold: bool = False,
                narrow: bool = True) -> list[RowKnobs]:
    """Every combination of a row kernel's structural knobs: lanes (each with the hand tile for
    that width), the task loop parallel or serial, counters (``narrow``: the unit's narrow ones
    or 32-bit; 32-bit ones unroll a sampled part of the words); the rows and the output block
    are sampled."""
    outputs, rows = row_shape(sch, threshold)
    found = []
    for lanes in lane_choices(outputs, unit):
        _, out_block, row_block = row_tile(outputs, rows, replace(unit, lanes=lanes), threshold)
        for parallel_loops in (1, 0):
            for counters in counter_choices(unit, lanes, "root") if narrow else ("words",):
                found.append(RowKnobs(lanes, row_block, out_block, parallel_loops, counters, unroll=counters == "words"))
    return found


def split_rows(sch: s_tir.Schedule, rows, knobs: RowKnobs, unit: VectorUnit, space: bool):
    """``rows`` split into blocks of ``knobs.row_block`` (in a space, a sampled perfect tile)."""
    (height,) = extents(sch, [rows])
    if space:
        most = max(unit.accumulators, knobs.row_block)
        return sch.split(rows, sch.sample_perfect_tile(rows, n=2, max_innermost_factor=most,
                                                       decision=[height // knobs.row_block, knobs.row_block]))
    return sch.split(rows, [None, knobs.row_block])


def task_loop(sch: s_tir.Schedule, loops: list, parallel_loops: int):
    """``loops`` fused into one task loop, run in parallel if ``parallel_loops``."""
    task = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    if parallel_loops:
        sch.parallel(task)
    return task


def row_tiles(sch: s_tir.Schedule, out, mismatches, unit: VectorUnit, knobs: RowKnobs, space: bool = False) -> str:
    """Tile an output block ``[..., rows, outputs]``: tiles of ``row_block`` rows x ``out_block``
    outputs, one task per tile (with the leading loops), the counts ``mismatches`` computed at
    the task, rows unrolled, outputs as vectors of ``lanes``. Returns the counters used."""
    *lead, rows, outputs = sch.get_loops(out)
    (count,) = extents(sch, [outputs])
    r_outer, r_inner = split_rows(sch, rows, knobs, unit, space)
    out_block = choose(sch, knobs.out_block, channel_blocks(count, knobs.lanes, knobs.row_block, unit), space)
    o_outer, o_inner = sch.split(outputs, [None, out_block])
    sch.reorder(*lead, r_outer, o_outer, r_inner, o_inner)
    task = task_loop(sch, [*lead, r_outer, o_outer], knobs.parallel)
    sch.compute_at(mismatches, task, preserve_unit_loops=True)
    sch.unroll(r_inner)
    if knobs.lanes > 1:
        _, lane = sch.split(o_inner, [None, knobs.lanes])
        sch.vectorize(lane)
    return count_mismatches(sch, mismatches, knobs.lanes, 2, 1, unit, knobs.counters, knobs.unroll)


def row_threshold_tiles(sch: s_tir.Schedule, dot, unit: VectorUnit, knobs: RowKnobs, space: bool = False) -> str:
    """Rows x outputs -> thresholds -> packed words (``[..., rows, words]``): with whole words of
    outputs, per (leading loops, block of rows, word) one task, the tile that word's 32 outputs;
    otherwise the last word reads clamped outputs, so the task covers all outputs of its rows,
    an output block at a time. The integer results ``dot`` kept apart (``keep_dot_apart``).
    Returns the counters used."""
    mismatches = sch.get_sblock("mismatches")
    bits, pack = sch.get_sblock("threshold_bits"), sch.get_sblock("threshold_pack")
    *lead, rows, words, _ = sch.get_loops(pack)
    outputs, _ = row_shape(sch, threshold=True)
    aligned = outputs % WORD_BITS == 0
    r_outer, r_inner = split_rows(sch, rows, knobs, unit, space)
    sch.reorder(*lead, r_outer, words, r_inner)
    sch.compute_at(bits, r_inner, preserve_unit_loops=True)
    keep_dot_apart(sch, dot, r_inner if aligned else r_outer, knobs.lanes if aligned else 1)
    task = task_loop(sch, [*lead, r_outer, words] if aligned else [*lead, r_outer], knobs.parallel)
    sch.compute_at(mismatches, task, preserve_unit_loops=True)
    if not aligned:
        out_block = choose(sch, knobs.out_block, channel_blocks(outputs, knobs.lanes, knobs.row_block, unit), space)
        o_outer, _ = sch.split(sch.get_loops(mismatches)[-2], [None, out_block])
        loops = sch.get_loops(mismatches)
        sch.reorder(o_outer, loops[-4])  # output blocks outside the rows
    counters = count_mismatches(sch, mismatches, knobs.lanes, 2, 1, unit, knobs.counters, knobs.unroll)
    pack_words(sch, bits, pack, unit.lanes)
    return counters


def dense_float(sch: s_tir.Schedule, func, unit: VectorUnit, knobs: RowKnobs | None = None,
                space: bool = False) -> Scheduled:
    """``binary_dense`` (``_table``, ``_epilogue``; ternary alike): int32 tile of batch rows x
    outputs in registers, finished per output (a convert and epilogue, or a table lookup)."""
    knobs = knobs or row_knobs(sch, func, unit)
    mismatches = sch.get_sblock("mismatches")
    relayouts = relayout_dense_weights(sch, func)
    sch.compute_inline(integer_result(sch, func))
    count_nonzeros(sch)
    counters = row_tiles(sch, row_out_block(sch), mismatches, unit, knobs, space)
    plan = f"dense: {knobs.row_block} rows x {knobs.out_block} outputs in registers, {knobs.lanes} lanes, {counters}"
    return Scheduled(sch.mod["main"], plan, relayouts)


def dense_threshold(sch: s_tir.Schedule, func, unit: VectorUnit, knobs: RowKnobs | None = None,
                    space: bool = False) -> Scheduled:
    """``binary_dense_threshold`` (ternary alike): per 32 outputs, tile -> thresholds -> packed word."""
    knobs = knobs or row_knobs(sch, func, unit, threshold=True)
    relayouts = relayout_dense_weights(sch, func)
    dot = integer_result(sch, func)
    count_nonzeros(sch)
    counters = row_threshold_tiles(sch, dot, unit, knobs, space)
    plan = (f"dense+threshold: {knobs.row_block} rows x {knobs.out_block} outputs, {knobs.lanes} lanes, {counters}, "
            "mask-packed words")
    return Scheduled(sch.mod["main"], plan, relayouts)


def attention_scores(sch: s_tir.Schedule, func, unit: VectorUnit, knobs: RowKnobs | None = None,
                     space: bool = False) -> Scheduled:
    """``Sign(Q) Sign(K)^T`` (``bitserial.attention_scores_dot``): per (batch, head, block of query
    rows, block of keys) one task, a tile of rows x keys accumulated in vector registers over the
    words of d, as a dense's rows x outputs. K arrives tokens last (``pack_heads``), so a vector
    of keys is one load, and each query word is broadcast to all lanes."""
    knobs = knobs or row_knobs(sch, func, unit, narrow=False)
    mismatches = sch.get_sblock("mismatches")
    sch.compute_inline(sch.get_sblock("attention_dot"))
    counters = row_tiles(sch, sch.get_sblock("scores_float"), mismatches, unit, knobs, space)
    plan = (f"attention scores: {knobs.row_block} queries x {knobs.out_block} keys in registers, "
            f"{knobs.lanes} lanes, {counters}")
    return Scheduled(sch.mod["main"], plan)


def attention_bits(sch: s_tir.Schedule, func, unit: VectorUnit, knobs: RowKnobs | None = None,
                   space: bool = False) -> Scheduled:
    """Bi-Attention's bits (``bitserial.attention_bits``): as a dense's thresholds, per (batch,
    head, block of query rows, word of 32 keys) one task, the scores of the rows x 32 keys
    accumulated in vector registers over the words of d, compared with the keys' intervals and
    packed into each row's word by mask."""
    knobs = knobs or row_knobs(sch, func, unit, threshold=True, narrow=False)
    counters = row_threshold_tiles(sch, sch.get_sblock("attention_dot"), unit, knobs, space)
    plan = (f"attention bits: {knobs.row_block} queries x {knobs.out_block} keys in registers, "
            f"{knobs.lanes} lanes, {counters}")
    return Scheduled(sch.mod["main"], plan + ", mask-packed words")


DENSE_FLOAT = Rule(dense_float, row_knobs, row_choices, relayout_dense_weights)
DENSE_THRESHOLD = Rule(dense_threshold, functools.partial(row_knobs, threshold=True),
                      functools.partial(row_choices, threshold=True), relayout_dense_weights)
ATTENTION_SCORES = Rule(attention_scores, functools.partial(row_knobs, narrow=False),
                       functools.partial(row_choices, narrow=False))
ATTENTION_BITS = Rule(attention_bits, functools.partial(row_knobs, threshold=True, narrow=False),
                           functools.partial(row_choices, threshold=True, narrow=False))



@dataclass(frozen=True)
class PackKnobs:
    """The choices of a sign-pack's schedule."""

    lanes: int  # consecutive positions of a row per vector (sampled in a space)
    parallel: int  # outer loops fused into the parallel loop: none, rows, rows x column blocks


MAX_PACK_POSITIONS = 16  # positions per vector a design space samples up to


def pack_knobs(sch: s_tir.Schedule, func, unit: VectorUnit) -> PackKnobs:
    """The hand choices: the widest power-of-two vector of positions that divides the row, or
    for narrow rows (7, 14: a ResNet's last stages) the row's largest divisor up to the unit's
    lanes as one odd-width vector, which LLVM widens to a register: 2-3x faster packs there
    than 1- or 2-lane vectors (Zen 4); where a power of two of 4 or more lanes divides the row
    (28, 56), it stays: faster than that. Rows in parallel where the pack is worth it."""
    block = sch.get_sblock("pack_sign")
    loops = sch.get_loops(block)
    (width,) = extents(sch, [loops[2]]) if len(loops) == 5 else (1,)
    lanes = power_of_two_divisor(width, unit.lanes)
    if lanes < 4:
        lanes = largest_divisor(width, unit.lanes)
    return PackKnobs(lanes, parallel_count(block_work(sch, block)))


def pack_choices(sch: s_tir.Schedule, func, unit: VectorUnit) -> list[PackKnobs]:
    """The parallel loops (the positions per vector are sampled); none for a 2-D input."""
    if len(sch.get_loops(sch.get_sblock("pack_sign"))) != 5:
        return []
    lanes = pack_knobs(sch, func, unit).lanes
    return [PackKnobs(lanes, parallel_loops) for parallel_loops in (0, 1, 2)]


def pack_sign(sch: s_tir.Schedule, func, unit: VectorUnit, knobs: PackKnobs | None = None,
              space: bool = False) -> Scheduled:
    """Float NCHW -> bits: each vector takes ``lanes`` consecutive positions of a row; per
    channel one load, one compare, one masked add of the channel's bit; the finished words
    are stored channels-last. ``[rows, C]`` input: ``pack_rows``; other ranks: ``generic``."""
    block = sch.get_sblock("pack_sign")
    loops = sch.get_loops(block)
    if len(loops) == 3:
        # (a design space keeps the traced schedule: the mask kernel is built, not scheduled)
        return pack_rows(sch, func, unit, masks=not space)
    if len(loops) != 5:
        return generic(sch, func, unit)
    knobs = knobs or pack_knobs(sch, func, unit)
    n, y, x, cw, b = loops
    (width,) = extents(sch, [x])
    # Vectors along the row only: a vector spanning rows would make the local word buffer's
    # region non-rectangular.
    if space:
        positions = sch.sample_perfect_tile(x, n=2, max_innermost_factor=max(MAX_PACK_POSITIONS, knobs.lanes),
                                            decision=[width // knobs.lanes, knobs.lanes])
    else:
        positions = [None, knobs.lanes]
    x_outer, x_inner = sch.split(x, positions)
    # a ternary activation's interleaved sign and nonzero words (``pack_ternary``): both from
    # one load and compare per channel, the word's parity a constant in each unrolled copy
    planes = list(sch.split(cw, [None, 2])) if kernel_op(func) == "pack_ternary" else [cw]
    sch.reorder(n, y, x_outer, planes[0], b, *planes[1:], x_inner)
    task = sch.fuse(n, y)
    parallel_loop(sch, [task, x_outer], knobs.parallel)
    words = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(words, planes[0])
    if knobs.lanes > 1:
        sch.vectorize(x_inner)
    sch.decompose_reduction(block, b)
    sch.unroll(b)
    for plane in planes[1:]:
        sch.unroll(plane)
    return Scheduled(sch.mod["main"], f"pack: {knobs.lanes} positions per vector" + (", both words" if planes[1:] else ""))


PACK_SIGN = Rule(pack_sign, pack_knobs, pack_choices)


def pack_rows(sch: s_tir.Schedule, func, unit: VectorUnit, name: str = "pack_sign", masks: bool = True) -> Scheduled:
    """Float ``[N, C]`` -> bits (a dense's or a token matmul's rows; or attention's per-head
    ``pack_heads``), the packed axis contiguous: a word's 32 bits as vectors of ``lanes``
    consecutive channels (one load, one compare, one masked add of their bits each), the lanes'
    partial words then summed (bits of different channels never overlap: the sum is their OR,
    in any order). ``masks``: a ternary pack of rows on x86 as compare masks instead
    (``ternary_mask_rows``)."""
    block = sch.get_sblock(name)
    *outer, word, b = sch.get_loops(block)
    if masks and kernel_op(func) == "pack_ternary" and len(outer) == 1:
        masked = ternary_mask_rows(sch, block, unit)
        if masked is not None:
            return masked
    lanes = power_of_two_divisor(WORD_BITS, unit.lanes)
    if lanes < 4:
        return generic(sch, func, unit)
    _, lane = sch.split(b, [None, lanes])
    partial = sch.rfactor(lane, 0)
    task = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    parallel(sch, task, block_work(sch, block))
    sch.compute_at(partial, word)
    sch.set_scope(partial, 0, "local")
    lane_loop, bit_outer = sch.get_loops(partial)[-2:]
    sch.reorder(bit_outer, lane_loop)
    sch.vectorize(lane_loop)
    sch.decompose_reduction(partial, bit_outer)
    return Scheduled(sch.mod["main"], f"pack: {lanes} bits of a word per vector")


def ternary_mask_rows(sch: s_tir.Schedule, block, unit: VectorUnit) -> Scheduled | None:
    """``pack_ternary`` of ``[N, C]`` rows with the compares' lane masks as bits
    (``schedules.mask_pack``), where it applies (x86, ``C`` a multiple of 32)."""
    rows, channels = (int(d) for d in sch.get(block).reads[0].source.shape)
    if not mask_pack.applies(unit, channels):
        return None
    work = rows * channels
    func = mask_pack.ternary_rows(rows, channels, unit.lanes, rows > 1 and work >= PARALLEL_MIN_WORK)
    return Scheduled(func, f"pack: ternary words from {unit.lanes}-lane compare masks")


def built_kernel(func, op: str, unit: VectorUnit) -> bool:
    """Whether the hand schedule of ``func`` is a kernel built anew rather than a schedule of
    its compute (``ternary_mask_rows``): it has no design space to tune."""
    if op != "pack_ternary":
        return False
    sch = s_tir.Schedule(func)
    block = sch.get_sblock("pack_sign")
    return len(sch.get_loops(block)) == 3 and ternary_mask_rows(sch, block, unit) is not None


def pack_heads(sch: s_tir.Schedule, func, unit: VectorUnit) -> Scheduled:
    """Attention's heads packed along ``d`` (contiguous in the float input): as ``pack_rows``."""
    return pack_rows(sch, func, unit, "pack_heads")


def power_of_two_divisor(n: int, limit: int) -> int:
    lanes = limit
    while lanes > 1 and n % lanes:
        lanes //= 2
    return lanes


def generic(sch: s_tir.Schedule, func, unit: VectorUnit) -> Scheduled:
    """Any other kernel: the two leading loops of each top-level block in parallel (where the
    block does enough work)."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        loops = sch.get_loops(block)
        if len(loops) >= 2:
            try:
                parallel(sch, sch.fuse(loops[0], loops[1]), block_work(sch, block))
            except (RuntimeError, tvm.error.InternalError):  # a reduction among them: leave this block serial
                pass
    return Scheduled(sch.mod["main"], "generic: parallel outer loops")


def halves_difference(sch: s_tir.Schedule, func, unit: VectorUnit) -> Scheduled:
    """TTQ's ``b * P - a * N`` (``bitserial.halves_difference``, elementwise, NCHW or ``[N,
    C]``): images x channels in parallel, the positions of a channel (the channels of a row)
    in vectors."""
    block = sch.get_sblock("halves_difference")
    loops = sch.get_loops(block)
    inner = sch.fuse(*loops[2:]) if len(loops) > 2 else loops[1]
    (extent,) = extents(sch, [inner])
    lanes = power_of_two_divisor(extent, unit.lanes)
    if lanes > 1:
        _, vector = sch.split(inner, [None, lanes])
        sch.vectorize(vector)
    if len(loops) > 2:
        parallel(sch, sch.fuse(loops[0], loops[1]), block_work(sch, block))
    return Scheduled(sch.mod["main"], f"difference: {lanes}-lane vectors")


# The kinds whose schedule is a rule with knobs (``schedules.tuning``'s binary-aware design spaces)
RULES = {
    **dict.fromkeys(("binary_conv2d", "binary_conv2d_table", "binary_conv2d_epilogue", "multibit_conv2d",
                     "multibit_conv2d_table", "ternary_conv2d", "ternary_conv2d_table", "ternary_conv2d_epilogue",
                     "binary_conv2d_ttq", "ternary_conv2d_ttq"),
                    CONV_FLOAT),
    **dict.fromkeys(("binary_conv2d_threshold", "multibit_conv2d_threshold", "ternary_conv2d_threshold"), CONV_THRESHOLD),
    **dict.fromkeys(("pack_sign", "pack_sign_pair", "pack_sign_steps", "pack_ternary", "pack_levels"), PACK_SIGN),
    **dict.fromkeys(("binary_dense", "binary_dense_table", "binary_dense_epilogue", "ternary_dense",
                     "ternary_dense_table", "ternary_dense_epilogue"), DENSE_FLOAT),
    **dict.fromkeys(("binary_dense_threshold", "ternary_dense_threshold"), DENSE_THRESHOLD),
    # the context (scores x V) has the scores' blocks: rows x outputs over words
    **dict.fromkeys(("binary_attention_scores", "ternary_attention_scores", "binary_attention_context",
                     "ternary_attention_context"), ATTENTION_SCORES),
    **dict.fromkeys(("binary_attention_bits", "ternary_attention_bits"), ATTENTION_BITS),
}

KERNELS = {
    **{op: rule.apply for op, rule in RULES.items()},
    "float_conv2d": float_conv,
    "ttq_difference": halves_difference,
    "pack_heads": pack_heads,
}


def schedule_kernel(func: tirx.PrimFunc, op: str, unit: VectorUnit) -> Scheduled:
    """Schedule one ``bnn.op`` kernel; falls back to the generic schedule if the fast one does
    not apply to this shape (the compute is the same, so the result is exact either way)."""
    fast = KERNELS.get(op)
    if fast is not None:
        try:
            return fast(s_tir.Schedule(func), func, unit)
        except (RuntimeError, ValueError, tvm.error.InternalError) as err:
            if os.environ.get("BNN_STRICT_SCHEDULES"):
                raise
            fallback = generic(s_tir.Schedule(func), func, unit)
            fallback.plan += f" (fast schedule not applicable: {str(err).splitlines()[0][:200]})"
            return fallback
    return generic(s_tir.Schedule(func), func, unit)
