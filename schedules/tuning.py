"""Binary-aware MetaSchedule search spaces for the XNOR-popcount kernels, and tuned records applied.

MetaSchedule's generic space does not find popcount-friendly schedules,
so for each kernel kind the passes emit (``bnn.op``) the space here is the family of schedules
the hand-written CPU schedules (``schedules.cpu``) belong to, with their fixed choices turned
into knobs:

* structural knobs, one design space each (a trace that tensorizes must know its tile shape):
  the output-width tile (``width_block``), the vector width (``lanes``: output channels per
  SIMD register), which loops form the parallel loop (rows; rows and column blocks; rows,
  column blocks and channel blocks), and on units whose popcount is a byte-table lookup, the
  counters (bytes per chunk, ``cpu.count_mismatches``, or 32-bit words); on NEON, halfwords
  per chunk or 32-bit words;
* sampled knobs, as MetaSchedule sampling instructions that its evolutionary search mutates:
  the channel tile in vectors (``sample_perfect_tile``), the unrolled part of the reduction over
  kernel columns and channel words (``sample_perfect_tile``, the inner factor unrolled), and for
  ``pack_sign`` the positions packed per vector.

Weights and the padding correction are constants: every space relays them out the way
``schedules.cpu`` does (output channels innermost), and :func:`apply_database` permutes the
constants at the call sites (``schedules.replace_kernels``), as ``schedule_module`` does.

Float kernels (``LegalizeOps`` output) are tuned in MetaSchedule's default space; kernel kinds
without a space here (``max_pool_or``, ``pack_levels``, ...) too. k-bit convs (``multibit_*``)
share the binary convs' spaces: their planes are unrolled inside the popcount term.

:func:`apply_database` (``compile --db DIR``) replaces each PrimFunc whose workload has a record
by the best record's schedule, tagged ``tirx.is_scheduled``; a tuned binary kernel keeps its
kind as ``bnn.tuned_op`` instead of ``bnn.op``, so ``schedule_module`` leaves it alone.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx

from . import OPAQUE_PATTERN, SCHEDULED_ATTR, bitserial, cpu, vector_unit

LOG = logging.getLogger(__name__)

WORD_BITS = 32
TUNED_OP_ATTR = "bnn.tuned_op"
WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"


# --------------------------------------------------------------------------------------------
# Tensor intrinsics of the spaces: ``schedules.cpu``'s, registered under names of their own
# (a stored trace names them; ``register_intrinsics_named_in`` re-registers them by name)


def pack32_intrin(index_dtype: str) -> str:
    return cpu.register_intrinsic(f"bnn_tuning_pack32_{index_dtype}", lambda: cpu._pack_bits32_funcs(index_dtype))


def tile_out_intrin(rows: int, lanes: int, steps: tuple[str, ...], index_dtype: str, levels: int = 1,
                    activation_scale: float | None = None) -> str:
    """``schedules.cpu``'s tile epilogue (convert, a k-bit input's ``bitserial.activation_value``,
    per-channel float ``steps``, transpose)."""
    activation = cpu.activation_suffix(levels, activation_scale)
    name = f"bnn_tuning_tile_out_{rows}x{lanes}{activation}{''.join('_' + step for step in steps)}_{index_dtype}"
    return cpu.register_intrinsic(
        name, lambda: cpu._tile_out_funcs(rows, lanes, tuple(steps), index_dtype, levels=levels,
                                          activation_scale=activation_scale)
    )


INTRINSIC_NAMES = (
    (re.compile(r"bnn_tuning_pack32_(\w+)$"), lambda m: pack32_intrin(m[1])),
    (re.compile(r"bnn_byte_step_(\d+)_(int\d+)(?:_(masked_data|masked_weight|both_ternary))?$"),
     lambda m: cpu.byte_step_intrin(int(m[1]), m[2], m[3] or "xor")),
    (re.compile(r"bnn_byte_finish_(\d+)_(int\d+)(?:_minus_from_(\d+))?$"),
     lambda m: cpu.byte_finish_intrin(int(m[1]), m[2], int(m[3] or 0))),
    (re.compile(r"bnn_halfword_step_(aarch64|armv7)_(\d+)_(int\d+)(?:_(masked_data|masked_weight|both_ternary))?$"),
     lambda m: cpu.halfword_step_intrin(int(m[2]), m[3], m[1], m[4] or "xor")),
    (re.compile(r"bnn_halfword_finish_(aarch64|armv7)_(\d+)_(int\d+)(?:_minus_from_(\d+))?$"),
     lambda m: cpu.halfword_finish_intrin(int(m[2]), m[3], m[1], int(m[4] or 0))),
    (re.compile(rf"bnn_tuning_tile_out_(\d+)x(\d+)(?:_div(\d+)|_mul([0-9a-f]{{8}}))?((?:_(?:{'|'.join(bitserial.EPILOGUE_OPS)}))*)_(int\d+)$"),
     lambda m: tile_out_intrin(int(m[1]), int(m[2]), tuple(m[5].split("_")[1:]), m[6], int(m[3] or 1),
                               cpu.scale_of_suffix(m[4]) if m[4] else None)),
)


def register_intrinsics_named_in(lines) -> None:
    """Register the intrinsics that stored records name: ``JSONDatabase`` parses every trace when
    it opens, and a ``Tensorize`` of an intrinsic this process has not registered fails it."""
    names = set()
    for line in lines:
        names.update(re.findall(r"bnn_(?:tuning|byte|halfword)_[A-Za-z0-9_]+", line))
    for name in names:
        for pattern, register in INTRINSIC_NAMES:
            match = pattern.match(name)
            if match:
                register(match)


def register_intrinsics(trace) -> None:
    """Register the tensor intrinsics a stored trace names (they exist per tile shape and are
    registered on first use, which a new process has not seen yet)."""
    for inst in trace.insts:
        if inst.kind.name != "Tensorize":
            continue
        name = str(inst.attrs[0])
        for pattern, register in INTRINSIC_NAMES:
            match = pattern.match(name)
            if match:
                register(match)


# --------------------------------------------------------------------------------------------
# Knob ranges


@dataclass(frozen=True)
class Tile:
    """The structural knobs of one design space."""

    width_block: int  # output positions per register tile
    lanes: int  # output channels per vector register
    parallel: int  # outer loops fused into the parallel loop (see PARALLEL_NAMES)
    pad: str = "root"  # zero-padded input: "root" (one parallel pass first) or "task" (per parallel task)
    counters: str = "words"  # mismatch counters: "words" (32-bit), "bytes" or "halfwords" (``cpu.count_mismatches``)

    def describe(self) -> str:
        return (f"{self.width_block} positions, {self.lanes} lanes, parallel over {PARALLEL_NAMES[self.parallel]}, "
                f"padding {'in its own pass' if self.pad == 'root' else 'per task'}, {self.counters[:-1]} counters")


PARALLEL_NAMES = {0: "nothing", 1: "rows", 2: "rows x column blocks", 3: "rows x column blocks x channel blocks"}


def divisors(n: int, limit: int) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def lane_choices(channels: int, unit) -> list[int]:
    """The unit's full vector width and half of it, where they divide ``channels``."""
    widest = cpu.vector_lanes(channels, unit)
    return sorted({widest, widest // 2} if widest >= 8 else {widest}, reverse=True)


def width_choices(width: int, budget: int) -> list[int]:
    """Width tiles that divide the output width (no loop tails); one position only as a last resort."""
    found = [d for d in divisors(width, budget) if d > 1]
    return found or [1]


def tiles(channels: int, width: int, unit, padded: bool, parallel_choices=(1, 2, 3)) -> list[Tile]:
    """Every combination of the structural knobs. A padded conv may copy its padded input in a
    pass of its own (another parallel region: a fork/join costs ~10 us on a busy machine) or per
    parallel task, the rows that task reads (some rows twice). A unit whose popcount is a byte
    table may count in bytes or in 32-bit words (whole vectors only), a NEON unit in halfwords or
    32-bit words; narrow counters take the padding in its own pass (their ``rfactor`` needs the
    counting block first in its task)."""
    return [
        Tile(w, lanes, p, pad, counters)
        for lanes in lane_choices(channels, unit)
        for w in width_choices(width, unit.accumulators)
        for p in parallel_choices
        for pad in (("root", "task") if padded else ("root",))
        for counters in narrow_choices(unit, lanes, pad)
    ]


def narrow_choices(unit, lanes: int, pad: str) -> tuple[str, ...]:
    """The counters a tile of ``lanes`` may count in on ``unit`` (``cpu.narrow_counters``)."""
    narrow = cpu.narrow_counters(unit, lanes, "xor") if pad == "root" else ""
    return (narrow, "words") if narrow else ("words",)


def extent(sch: s_tir.Schedule, loop) -> int:
    return int(sch.get(loop).extent)


# --------------------------------------------------------------------------------------------
# Pieces shared by the spaces


def unrolled_split(sch: s_tir.Schedule, loop, max_unroll: int):
    """Split ``loop`` by a sampled factor (at most ``max_unroll``) and return ``(outer, inner)``;
    the caller unrolls ``inner``."""
    factors = sch.sample_perfect_tile(loop, n=2, max_innermost_factor=max(1, min(max_unroll, extent(sch, loop))))
    return sch.split(loop, factors)


def accumulate_tile(sch: s_tir.Schedule, block, lanes: int) -> None:
    """Register accumulation of a ``mismatches`` block computed inside a tile.

    The block's innermost loops are ``positions, channels, ry, rx, rc`` (conv) or
    ``positions, channels, rk`` (dense). The reduction goes outside the tile; a sampled part of
    the kernel columns and of the channel words is unrolled; positions and vectors of channels
    are unrolled, lanes vectorised.
    """
    loops = sch.get_loops(block)
    conv = len(sch.get(block).iter_vars) == 7
    reduce = loops[-3:] if conv else loops[-1:]
    positions, channels = loops[-len(reduce) - 2 : -len(reduce)]
    vectors, lane = sch.split(channels, [None, lanes])
    if conv:
        ry, rx, rc = reduce
        rx_outer, rx_inner = unrolled_split(sch, rx, 3)
        rc_outer, rc_inner = unrolled_split(sch, rc, 4)
        sch.reorder(ry, rx_outer, rc_outer, rx_inner, rc_inner, positions, vectors, lane)
        first, unrolled = ry, [rx_inner, rc_inner]
    else:
        rk_outer, rk_inner = unrolled_split(sch, reduce[0], 4)
        sch.reorder(rk_outer, rk_inner, positions, vectors, lane)
        first, unrolled = rk_outer, [rk_inner]
    for loop in unrolled + [positions, vectors]:
        sch.unroll(loop)
    if lanes > 1:
        sch.vectorize(lane)
    sch.decompose_reduction(block, first)
    sch.set_scope(block, 0, "local")


def count_tile(sch: s_tir.Schedule, block, tile: Tile, unit) -> None:
    """The ``mismatches`` block inside a tile in the tile's counters: byte (halfword) counters as
    ``schedules.cpu`` lays them out, or 32-bit accumulators (``accumulate_tile``; also for a
    k-bit conv's weighted planes, which byte counters do not take)."""
    if tile.counters in ("bytes", "halfwords") and cpu.is_single_popcount(sch, block):
        conv = len(sch.get(block).iter_vars) == 7
        cpu.count_mismatches(sch, block, tile.lanes, 2, 3 if conv else 1, unit)
    else:
        accumulate_tile(sch, block, tile.lanes)


def finish_dot(sch: s_tir.Schedule, dot, loop, lanes: int) -> None:
    """The integer result (``taps - 2 m + correction``) as its own register stage at ``loop``:
    not inlined into the thresholds (TVM's simplifier would move its terms across ``<=`` and
    overflow on INT32_MIN/MAX bounds), and finished as vectors of channels."""
    sch.compute_at(dot, loop, preserve_unit_loops=True)
    sch.set_scope(dot, 0, "local")
    positions, channels = sch.get_loops(dot)[-2:]
    vectors, lane = sch.split(channels, [None, lanes])
    sch.unroll(positions)
    sch.unroll(vectors)
    if lanes > 1:
        sch.vectorize(lane)


def pack_words(sch: s_tir.Schedule, bits_block, pack_block, lanes: int) -> None:
    """Each word's 32 decisions as one vector, the word packed by mask (tensorized)."""
    if lanes > 1:
        sch.vectorize(sch.get_loops(bits_block)[-1])
    sch.decompose_reduction(pack_block, sch.get_loops(pack_block)[-1])
    bit = sch.get_loops(pack_block)[-1]
    sch.tensorize(bit, pack32_intrin(str(sch.get(bit).loop_var.ty)))


def place_padding(sch: s_tir.Schedule, tile: "Tile", task_loop, lanes: int) -> None:
    """The zero-padded input copy: its own pass, or computed inside each parallel task."""
    if not has_block(sch, "pad_bits"):
        return
    if tile.pad == "task":
        sch.compute_at(sch.get_sblock("pad_bits"), task_loop, preserve_unit_loops=True)
        return
    pad_rows(sch, lanes)


def pad_rows(sch: s_tir.Schedule, lanes: int) -> None:
    """The zero-padded input copy at root: rows in parallel, each row's words as vectors."""
    if not has_block(sch, "pad_bits"):
        return
    *rows, x, c = sch.get_loops(sch.get_sblock("pad_bits"))  # (plane,) image, row, column, word
    sch.parallel(sch.fuse(*rows))
    words = sch.fuse(x, c)
    width = max(d for d in divisors(extent(sch, words), lanes))
    if width > 1:
        sch.vectorize(sch.split(words, [None, width])[1])


def parallel_loop(sch: s_tir.Schedule, loops: list, count: int):
    """Fuse the first ``count`` of ``loops`` into the parallel loop; returns it (the first loop,
    serial, when ``count`` is 0)."""
    if count == 0:
        return loops[0]
    fused = sch.fuse(*loops[:count]) if count > 1 else loops[0]
    sch.parallel(fused)
    return fused


def has_block(sch: s_tir.Schedule, name: str) -> bool:
    try:
        sch.get_sblock(name)
        return True
    except (RuntimeError, ValueError, tvm.error.InternalError):
        return False


# --------------------------------------------------------------------------------------------
# Spaces, one function per kernel kind: (schedule, func, unit) -> list of design spaces


def conv_float_space(sch: s_tir.Schedule, func, unit) -> list[s_tir.Schedule]:
    """``binary_conv2d`` (float NCHW out) and ``binary_conv2d_table`` (per-channel table out)."""
    out_name = "dot_float" if has_block(sch, "dot_float") else "table_lookup"
    _, channels, _, width = (extent(sch, loop) for loop in sch.get_loops(sch.get_sblock(out_name)))
    padded = has_block(sch, "pad_bits")
    return [conv_float_design(sch.copy(), func, unit, tile, out_name) for tile in tiles(channels, width, unit, padded)]


def conv_float_design(sch, func, unit, tile: Tile, out_name: str) -> s_tir.Schedule:
    cpu.relayout_conv_constants(sch, func)
    mismatches, dot, out = sch.get_sblock("mismatches"), cpu.integer_result(sch, func), sch.get_sblock(out_name)
    n, o, y, x = sch.get_loops(out)
    sch.reorder(n, y, x, o)
    row = sch.fuse(n, y)
    x_outer, x_inner = sch.split(x, [None, tile.width_block])
    vector_loop, lane = sch.split(o, [None, tile.lanes])
    vectors = sch.sample_perfect_tile(vector_loop, n=2, max_innermost_factor=max(1, unit.accumulators // tile.width_block))
    o_outer, o_vectors = sch.split(vector_loop, vectors)
    sch.reorder(row, x_outer, o_outer, o_vectors, lane, x_inner)
    fused = parallel_loop(sch, [row, x_outer, o_outer], tile.parallel)
    tile_loop = fused if tile.parallel == 3 else o_outer
    finish_dot(sch, dot, tile_loop, tile.lanes)
    sch.compute_at(mismatches, tile_loop, preserve_unit_loops=True)
    count_tile(sch, mismatches, tile, unit)
    transposed = False
    if out_name == "dot_float" and tile.lanes >= 4 and tile.width_block > 1:
        index_dtype = str(sch.get(lane).loop_var.ty)
        try:
            intrin = tile_out_intrin(tile.width_block, tile.lanes, cpu.epilogue_steps(func), index_dtype,
                                     *cpu.kernel_activation(func))
            sch.tensorize(lane, intrin)
            transposed = True
        except (RuntimeError, ValueError, tvm.error.InternalError) as err:
            LOG.debug("register transpose not applicable: %s", str(err).splitlines()[0])
    sch.unroll(o_vectors)
    if not transposed:
        sch.unroll(lane)
        if tile.width_block > 1:
            sch.vectorize(x_inner)
    place_padding(sch, tile, fused, unit.lanes)
    return sch


def conv_threshold_space(sch: s_tir.Schedule, func, unit) -> list[s_tir.Schedule]:
    """``binary_conv2d_threshold``: tile -> thresholds -> mask-packed words."""
    channels = extent(sch, sch.get_loops(sch.get_sblock("mismatches"))[3])
    width = extent(sch, sch.get_loops(sch.get_sblock("threshold_pack"))[2])
    padded = has_block(sch, "pad_bits")
    return [conv_threshold_design(sch.copy(), func, unit, tile, channels) for tile in tiles(channels, width, unit, padded)]


def conv_threshold_design(sch, func, unit, tile: Tile, channels: int) -> s_tir.Schedule:
    cpu.relayout_conv_constants(sch, func)
    mismatches, dot = sch.get_sblock("mismatches"), cpu.integer_result(sch, func)
    bits, pack = sch.get_sblock("threshold_bits"), sch.get_sblock("threshold_pack")
    n, y, x, cw, _ = sch.get_loops(pack)
    row = sch.fuse(n, y)
    x_outer, x_inner = sch.split(x, [None, tile.width_block])
    if channels % WORD_BITS == 0:
        # A tile of whole words (how many: sampled), thresholded and packed word by word.
        per_word = WORD_BITS // tile.lanes
        words = sch.sample_perfect_tile(
            cw, n=2, max_innermost_factor=max(1, unit.accumulators // (tile.width_block * per_word))
        )
        cw_outer, cw_inner = sch.split(cw, words)
        sch.reorder(row, x_outer, cw_outer, cw_inner, x_inner)
        fused = parallel_loop(sch, [row, x_outer, cw_outer], tile.parallel)
        sch.compute_at(bits, x_inner, preserve_unit_loops=True)
        finish_dot(sch, dot, x_inner, tile.lanes)
        sch.compute_at(mismatches, fused if tile.parallel == 3 else cw_outer, preserve_unit_loops=True)
        count_tile(sch, mismatches, tile, unit)
    else:
        # The last word reads clamped channels: the tile covers all channels of its positions,
        # accumulated a channel block (sampled) at a time.
        sch.reorder(row, x_outer, cw, x_inner)
        fused = parallel_loop(sch, [row, x_outer], min(tile.parallel, 2))
        block_loop = fused if tile.parallel >= 2 else x_outer
        sch.compute_at(bits, x_inner, preserve_unit_loops=True)
        sch.compute_at(dot, block_loop, preserve_unit_loops=True)
        sch.set_scope(dot, 0, "local")
        sch.compute_at(mismatches, block_loop, preserve_unit_loops=True)
        loops = sch.get_loops(mismatches)
        positions, o = loops[-5], loops[-4]
        vector_loop, lane = sch.split(o, [None, tile.lanes])
        vectors = sch.sample_perfect_tile(vector_loop, n=2, max_innermost_factor=max(1, unit.accumulators // tile.width_block))
        o_outer, o_vectors = sch.split(vector_loop, vectors)
        sch.reorder(o_outer, positions)
        sch.fuse(o_vectors, lane)
        count_tile(sch, mismatches, tile, unit)
    pack_words(sch, bits, pack, unit.lanes)
    place_padding(sch, tile, fused, unit.lanes)
    return sch


def pack_sign_space(sch: s_tir.Schedule, func, unit) -> list[s_tir.Schedule]:
    """Float NCHW -> packed bits: positions per vector (sampled), which loops run in parallel."""
    if len(sch.get_loops(sch.get_sblock("pack_sign"))) != 5:
        return [sch]  # 2-D input: nothing to choose here, the default lowering
    return [pack_sign_design(sch.copy(), parallel) for parallel in (0, 1, 2)]


def pack_sign_design(sch, parallel: int, max_positions: int = 16) -> s_tir.Schedule:
    block = sch.get_sblock("pack_sign")
    n, y, x, cw, b = sch.get_loops(block)
    x_outer, x_inner = sch.split(x, sch.sample_perfect_tile(x, n=2, max_innermost_factor=max_positions))
    sch.reorder(n, y, x_outer, cw, b, x_inner)
    row = sch.fuse(n, y)
    parallel_loop(sch, [row, x_outer], parallel)
    words = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(words, cw)
    sch.vectorize(x_inner)
    sch.decompose_reduction(block, b)
    sch.unroll(b)
    return sch


SPACES = {
    "binary_conv2d": conv_float_space,
    "binary_conv2d_table": conv_float_space,
    "binary_conv2d_epilogue": conv_float_space,
    "binary_conv2d_threshold": conv_threshold_space,
    "multibit_conv2d": conv_float_space,
    "multibit_conv2d_table": conv_float_space,
    "multibit_conv2d_threshold": conv_threshold_space,
    "pack_sign": pack_sign_space,
    "pack_sign_pair": pack_sign_space,
}


def design_spaces(func, op: str, spec) -> list[s_tir.Schedule] | None:
    """The binary-aware design spaces of a kernel, or None when it has none here."""
    space = SPACES.get(op)
    unit = vector_unit(spec)
    if space is None or unit is None:
        return None
    return space(s_tir.Schedule(workload(func)), func, unit)


def space_generator(func, op: str | None, spec):
    """A MetaSchedule space generator for a kernel: the binary-aware space where there is one,
    else MetaSchedule's default (post-order-apply with the target's rules)."""
    from tvm.s_tir import meta_schedule as ms

    unit = vector_unit(spec)
    if op not in SPACES or unit is None:
        return "post-order-apply"
    space = SPACES[op]

    def generate(sch: s_tir.Schedule):
        return space(sch, func, unit)

    return ms.space_generator.ScheduleFn(
        generate,
        sch_rules=[],
        postprocs=[ms.postproc.DisallowDynamicLoop()],
        mutator_probs={ms.mutator.MutateTileSize(): 1.0},
    )


# --------------------------------------------------------------------------------------------
# Tasks and workloads


def workload(func) -> tvm.IRModule:
    """The IRModule MetaSchedule keys a kernel's records by (its own normalisation), as a deep
    copy: a ``Schedule`` on a module whose loops are referenced only once rewrites them in place,
    which would change ``func`` (and the module it belongs to) under its other users."""
    func = func.with_attr("global_symbol", "main").with_attr("tirx.noalias", True)
    return tvm.ir.load_json(tvm.ir.save_json(tvm.IRModule({"main": func})))


def prepare_module(mod, spec):
    """The Relax module as its kernels will be compiled: what ``schedule_module`` does before it
    schedules (CPU: float convs as ``float_conv2d`` kernels, the
    hand-written max pools and matmuls of ``schedules.float_ops``) and
    what ``tvm.compile`` does first (Relax operators lowered to PrimFuncs), so that the tuner and
    ``compile --db`` see the same kernels as the build."""
    from tvm import relax

    from . import prepare_cpu_kernels

    if spec.family in ("x86", "arm"):
        mod = prepare_cpu_kernels(mod, spec)
    return relax.transform.LegalizeOps()(mod)


def tunable_kernels(mod):
    """``(global var, PrimFunc, bnn op or None)`` of every PrimFunc of a legalized module."""
    for gvar, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and SCHEDULED_ATTR not in (func.attrs or {}):
            op = str(func.attrs["bnn.op"]) if func.attrs is not None and "bnn.op" in func.attrs else None
            yield gvar, func, op


# --------------------------------------------------------------------------------------------
# The database: read tolerantly, applied to a module


def clean_lines(path: str, what: str) -> tuple[list[str], int]:
    """The parseable lines of a JSON-lines file and how many were dropped. Only a final line may
    be broken (a run killed while appending); one in the middle means the file is damaged."""
    from bnn_tvm.errors import BnnError

    if not os.path.exists(path):
        return [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    good = []
    for number, line in enumerate(lines, start=1):
        try:
            json.loads(line)
            good.append(line)
        except ValueError:
            if number != len(lines) and what == "workload":
                raise BnnError(f"{path}: line {number} is not JSON; the tuning database is damaged") from None
            warnings.warn(f"{path}: skipped {'a truncated last' if number == len(lines) else 'a broken'} line {number} "
                          "(a tuning run was killed while writing it)", stacklevel=3)
    return good, len(lines) - len(good)


def clean_database_files(db_dir: str) -> tuple[list[str], list[str], int]:
    """Workload and record lines of a database folder that can be loaded; records that refer to
    a workload line that did not survive are dropped too."""
    workloads, _ = clean_lines(os.path.join(db_dir, WORKLOAD_FILE), "workload")
    records, dropped = clean_lines(os.path.join(db_dir, RECORD_FILE), "record")
    kept = [line for line in records if valid_record(line, len(workloads))]
    return workloads, kept, dropped + len(records) - len(kept)


def valid_record(line: str, n_workloads: int) -> bool:
    entry = json.loads(line)
    return isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], int) and 0 <= entry[0] < n_workloads


def repair_database(db_dir: str) -> int:
    """Rewrite (atomically) a database folder without its broken lines; returns how many went."""
    from bnn_tvm.atomic_files import atomic_write

    workloads, records, dropped = clean_database_files(db_dir)
    if dropped:
        for name, lines in ((WORKLOAD_FILE, workloads), (RECORD_FILE, records)):
            text = "".join(line + "\n" for line in lines)
            atomic_write(os.path.join(db_dir, name), lambda tmp, text=text: open(tmp, "w").write(text))
    return dropped


def open_database(db_dir: str, writable: bool):
    """A ``JSONDatabase`` on ``db_dir``. Writable (for tuning): broken lines are removed from the
    files first. Read-only (for compiling, perhaps beside a running tune): a cleaned copy is read."""
    from tvm.s_tir import meta_schedule as ms

    from bnn_tvm.errors import BnnError

    if writable:
        os.makedirs(db_dir, exist_ok=True)
        repair_database(db_dir)
        register_intrinsics_named_in(clean_lines(os.path.join(db_dir, RECORD_FILE), "record")[0])
        return ms.database.JSONDatabase(work_dir=db_dir, module_equality="structural")
    if not os.path.isfile(os.path.join(db_dir, WORKLOAD_FILE)):
        raise BnnError(f"--db {db_dir}: no tuning database there ({WORKLOAD_FILE} missing); run `python -m bnn_tvm tune --db {db_dir}` first")
    workloads, records, _ = clean_database_files(db_dir)
    register_intrinsics_named_in(records)
    copy = tempfile.mkdtemp(prefix="bnn_tvm_db_")
    try:
        for name, lines in ((WORKLOAD_FILE, workloads), (RECORD_FILE, records)):
            with open(os.path.join(copy, name), "w") as f:
                f.write("".join(line + "\n" for line in lines))
        return _load_copy(copy)
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def _load_copy(folder: str):
    from tvm.s_tir import meta_schedule as ms

    database = ms.database.JSONDatabase(work_dir=folder, module_equality="structural")
    memory = ms.database.MemoryDatabase(module_equality="structural")
    for record in database.get_all_tuning_records():
        memory.commit_workload(record.workload.mod)
        memory.commit_tuning_record(record)
    return memory


FAILED_RUN_SECS = 1e9  # MetaSchedule records 1e10 s for a candidate that did not build or run
UNTUNED_FILE = "untuned.json"


def workload_key(func) -> str:
    """A task's identity across runs and processes: the structural hash of its workload."""
    import tvm_ffi

    return f"{tvm_ffi.structural_hash(workload(func)) & (2**64 - 1):016x}"


def tuning_target(spec, cores: int | None = None):
    """The spec's target with ``num-cores``, which MetaSchedule's rules and mutators require: this
    machine's count for the host, 4 (a Raspberry Pi's Cortex-A53/A72) for a board."""
    cores = cores or ((os.cpu_count() or 1) if spec.is_host else 4)
    return tvm.target.Target({**spec.target, "num-cores": cores})


def target_label(target) -> str:
    """What records are matched by: the target without ``num-cores`` (a record tuned on a machine
    with another core count is still a schedule for this CPU)."""
    attrs = {k: v for k, v in dict(target.export()).items() if k != "num-cores"}
    return json.dumps(attrs, sort_keys=True, default=list)


def record_seconds(record) -> float:
    secs = [float(s) for s in (record.run_secs or [])]
    return sum(secs) / len(secs) if secs else float("inf")


def untuned_times(db_dir: str, target) -> dict:
    """``{workload key: seconds}`` of the untuned schedules ``tune`` measured (``UNTUNED_FILE``)."""
    path = os.path.join(db_dir, UNTUNED_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        known = json.load(f).get(target_label(target), {})
    return {key: entry["seconds"] for key, entry in known.items() if entry.get("seconds")}


def best_schedule(database, func, target, untuned_seconds: float | None = None):
    """``(schedule, seconds)`` of the best valid record of ``func`` for ``target``, or None when
    there is none or it is not faster than ``untuned_seconds``."""
    mod = workload(func)
    if not database.has_workload(mod):
        return None
    label = target_label(target)
    for record in database.get_top_k(database.commit_workload(mod), 1 << 20):  # best first
        seconds = record_seconds(record)
        if target_label(record.target) != label:
            continue
        if seconds >= FAILED_RUN_SECS or (untuned_seconds is not None and seconds >= untuned_seconds):
            return None
        register_intrinsics(record.trace)
        sch = s_tir.Schedule(mod)
        try:
            record.trace.apply_to_schedule(sch, remove_postproc=False)
        except (RuntimeError, ValueError, tvm.error.InternalError) as err:  # a record of an older space
            LOG.warning("a tuning record does not replay (%s); trying the next", str(err).splitlines()[0])
            continue
        return sch, seconds
    return None


@dataclass
class TunedKernel:
    """Duck-typed like ``schedules.cpu.Scheduled`` for ``schedules.replace_kernels``."""

    func: tirx.PrimFunc
    plan: str
    relayouts: dict


def tuned_kernel(original, scheduled, op: str | None, name: str) -> TunedKernel:
    """The scheduled function with the original's attributes, tagged as scheduled, and the
    permutations its changed parameter shapes ask of the constants passed in."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    attrs = {k: v for k, v in dict(original.attrs).items() if k != "bnn.op"}
    if op is not None:
        attrs[TUNED_OP_ATTR] = op
    attrs[SCHEDULED_ATTR] = True
    attrs["op_pattern"] = OPAQUE_PATTERN  # FuseOps must not fuse float neighbours into it
    func = scheduled.without_attr("global_symbol").without_attr("bnn.op").with_attrs(attrs)
    before = [tuple(int(d) for d in a.shape) for a in ArgInfo.from_prim_func(original)]
    after = [tuple(int(d) for d in a.shape) for a in ArgInfo.from_prim_func(func)]
    relayouts = space_relayouts(original, op)
    for position, (old, new) in enumerate(zip(before, after)):
        axes = relayouts.get(position, tuple(range(len(old))))
        if tuple(old[a] for a in axes) != new:
            raise ValueError(f"{name}: tuned parameter {position} has shape {new}, the kernel's is {old}; unknown relayout")
    return TunedKernel(func, "tuned (MetaSchedule record)", relayouts)


def space_relayouts(original, op: str | None) -> dict:
    """The permutations of constant parameters every design space of ``op`` makes (a conv
    space's are the CPU schedule's, ``cpu.relayout_conv_constants``); none for MetaSchedule's
    default space. Taken from the space, not guessed from the tuned shapes: with equal extents
    (8 channels of an 8x8 output) a permuted correction has the shape it had."""
    if SPACES.get(op or "") not in (conv_float_space, conv_threshold_space):
        return {}
    return cpu.relayout_conv_constants(s_tir.Schedule(original), original)


def apply_database(mod, db_dir: str, spec, applied: dict | None = None):
    """Replace every PrimFunc of ``mod`` (a Relax module after the binarization passes) that has a
    record in the tuning database ``db_dir`` faster than its untuned schedule (as ``tune``
    measured it) by the best record's schedule.

    The module is prepared first (:func:`prepare_module`) so the kernels are the ones the tuner
    saw. ``applied``, if given, receives ``{kernel name: tuned seconds}``.
    """
    from . import replace_kernels

    database = open_database(db_dir, writable=False)
    target = spec.tvm_target()
    untuned = untuned_times(db_dir, target)
    mod = prepare_module(mod, spec)
    tuned = {}
    for gvar, func, op in list(tunable_kernels(mod)):
        found = best_schedule(database, func, target, untuned.get(workload_key(func)))
        if found is None:
            continue
        sch, seconds = found
        tuned[gvar.name_hint] = tuned_kernel(func, sch.mod["main"], op, gvar.name_hint)
        if applied is not None:
            applied[gvar.name_hint] = seconds
    return replace_kernels(mod, tuned) if tuned else mod
