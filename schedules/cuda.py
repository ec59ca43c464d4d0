"""CUDA schedules of the binary kernels (NVIDIA GPUs, ``targets.get("cuda", arch="sm_XX")``).

The computes are ``schedules.bitserial``'s, unchanged: packed uint32 words, channels last, so
the popcount of a word is one ``__popc`` (32-bit; ``__popcll`` would need 64-bit words, a
layout change shared with the CPU schedules).

Binary conv2d (and dense with a packed output) -- "one thread, one output word":

* A thread computes 32 consecutive output channels (one packed output word) of one output
  position. Its 32 mismatch counters live in registers; for every (tap, channel word) it loads
  the activation word once and XORs it with 32 weight words, so each loaded activation word
  serves 32 ``__popc``. The packed epilogue (threshold, pack 32 decisions into a word) then
  happens in the thread's registers: no cross-thread communication.
* A thread block is a tile of output positions (rows x columns of one image) for one output
  word (``blockIdx.y``). All its threads need the same 32 output channels' weights, which are
  staged once per block in shared memory (read back as broadcasts); the zero-padded input patch
  of the tile (halo included) is staged in shared memory too, so neighbouring positions share
  their input words. When both stages would not fit the shared-memory budget, the reduction
  over channel words is done in chunks, each chunk staged in turn.
* Float outputs (``binary_conv2d``: NCHW float) are written from the same registers, one
  channel at a time; consecutive threads hold consecutive columns, so the stores coalesce.

Binary dense with a float output: one thread per output (batch row, output unit), the packed
input row staged in shared memory. Packing (``pack_sign``), unpacking and the OR max pool: one
thread per output word/value, reductions in registers.

Float Relax operators are not scheduled here: ``tvm.compile``'s CUDA pipeline legalizes them
and applies ``tvm.s_tir.dlight``'s default GPU rules (Matmul, GEMV, Reduction,
GeneralReduction, Fallback). Scheduled kernels carry ``tirx.is_scheduled`` so dlight leaves
them alone.

Device code. Where TVM's CUDA runtime is loaded (a machine with the NVIDIA driver),
``tvm.compile`` turns the generated CUDA C into device code at once, through the
``tvm_callback_cuda_compile`` callback. Without it (CI, this project's build machines) TVM 0.27
keeps the CUDA C source in the module, and a library exported from there is compiled when it is
loaded on the GPU host, through the same callback. :func:`install_nvcc_callback` makes that
callback nvcc, building a fatbin with machine code for the arch plus its PTX (TVM's own defaults
to NVRTC, which needs the ``cuda-bindings`` package). :func:`compile_ptx` checks generated
source with nvcc without a GPU, and :func:`emulate` replays a schedule without its thread
bindings and shared scopes, so that its exact loop nest can be compared with the unscheduled
compute on the CPU.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

from tvm import s_tir, tirx

from . import OPAQUE_PATTERN, SCHEDULED_ATTR, bitserial, legalize

WORD_BITS = 32
ELEMENTWISE_THREADS = 256  # threads per block of the one-thread-per-output kernels
TILE_THREADS = 128  # positions per block of the conv tiles (each thread: 32 channels)
SHARED_BUDGET_BYTES = 32 * 1024  # staged weights + input patch per block (48 KiB is the limit)


@dataclass
class Scheduled:
    """A scheduled kernel, as ``schedules.schedule_module`` expects from every family."""

    func: tirx.PrimFunc
    plan: str
    # parameter position -> axes permutation of its constant (none: CUDA keeps the layouts)
    relayouts: dict[int, tuple[int, ...]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Small helpers


def extents(sch: s_tir.Schedule, loops) -> list[int]:
    return [int(sch.get(loop).extent) for loop in loops]


def largest_divisor(n: int, limit: int) -> int:
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def position_tile(height: int, width: int, threads: int = TILE_THREADS) -> tuple[int, int]:
    """``(rows, columns)`` of output positions per thread block.

    Columns: the width when it fits, else its largest divisor from 8 up (no idle threads),
    else a full warp's 32 with a predicated tail. Rows: as many as the thread budget allows,
    a divisor of the height when one is close to the budget.
    """
    if width <= threads:
        columns = width
    else:
        divisor = largest_divisor(width, 32)
        columns = divisor if divisor >= 8 else 32
    budget = max(1, threads // columns)
    rows = largest_divisor(height, budget)
    if rows * 2 <= min(height, budget):  # a poor divisor: take the budget, predicate the tail
        rows = min(height, budget)
    return rows, columns


def region_buffer(region):
    """The buffer a block's read/write region refers to (``TensorRegion.source`` in 0.27)."""
    return region.source if hasattr(region, "source") else region.buffer


def read_index(sch: s_tir.Schedule, block, func, position: int) -> int:
    """Which of ``block``'s reads is the function's parameter at ``position``."""
    name = func.params[position].name
    for index, region in enumerate(sch.get(block).reads):
        if region_buffer(region).name == name:
            return index
    raise ValueError(f"block {sch.get(block).name_hint} does not read parameter {name}")


def thread_loop(sch: s_tir.Schedule, loop, threads: int):
    """Split ``loop`` into ``(blocks, threads)`` and bind them; returns the threadIdx loop."""
    threads = max(1, min(threads, extents(sch, [loop])[0]))
    outer, inner = sch.split(loop, [None, threads])
    sch.bind(outer, "blockIdx.x")
    sch.bind(inner, "threadIdx.x")
    return inner


def cooperative_copy(sch: s_tir.Schedule, block, threads: int) -> None:
    """The loops of a staging block (computed at a block-level loop), spread over the block's
    ``threads`` threads."""
    loops = sch.get_loops(block)
    own = [loop for loop in loops if sch.get(loop).thread_binding is None]
    # the copy's own loops are the innermost ones, after the loop it was computed at
    count = len(sch.get(block).iter_vars)
    fused = sch.fuse(*own[-count:]) if count > 1 else own[-1]
    _, inner = sch.split(fused, [None, threads])
    sch.bind(inner, "threadIdx.x")


def inline_between(sch: s_tir.Schedule, main, output) -> None:
    """Inline every block after ``main`` except the one writing the output (the epilogue's
    elementwise steps: ``taps - 2 m + correction``, the per-channel decisions)."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    names = [sch.get(b).name_hint for b in blocks]
    start = names.index(sch.get(main).name_hint) + 1
    for block in blocks[start:]:
        if not sch.get(block).same_as(sch.get(output)):
            sch.compute_inline(block)


def reduction_vars(sch: s_tir.Schedule, block) -> list:
    return [iv for iv in sch.get(block).iter_vars if iv.iter_type != tirx.IterVar.DataPar]


def output_block(sch: s_tir.Schedule):
    (out,) = sch.get_output_blocks(sch.get_sblock("root"))
    return out


def finish(sch: s_tir.Schedule, plan: str) -> Scheduled:
    """The scheduled kernel, marked so that the CUDA pipeline keeps it as it is: dlight skips
    ``tirx.is_scheduled`` functions, and an opaque op pattern keeps FuseOps from fusing a float
    neighbour into it (a fused function is rebuilt from the computes, losing the schedule)."""
    func = sch.mod["main"].with_attrs({SCHEDULED_ATTR: True, "op_pattern": OPAQUE_PATTERN})
    return Scheduled(func, plan)


# --------------------------------------------------------------------------------------------
# Kernels


def main_block(sch: s_tir.Schedule, func):
    """The popcount reduction over the weights (parameter 1), or None (packing, pooling)."""
    if len(func.params) < 3:
        return None
    weight = func.params[1].name
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        reads_weights = any(region_buffer(r).name == weight for r in sch.get(block).reads)
        if reads_weights and reduction_vars(sch, block):
            return block
    return None


def word_tiles(sch: s_tir.Schedule, func, op: str) -> Scheduled:
    """Conv2d (binary or multi-bit planes, any output) and dense with a packed output: a thread
    per (position, 32 output channels), see the module docstring.

    The tiles are made on the output block's loops and the counters computed at the thread's
    loop (``compute_at``): the output's reads of the counters may be clamped
    (``min(c, channels - 1)`` for a channel count that is not a multiple of 32), which a
    producer-driven ``reverse_compute_at`` cannot invert.
    """
    main = main_block(sch, func)
    producers = sch.get_producers(main)  # the zero-padded input, if the conv pads
    out = output_block(sch)
    inline_between(sch, main, out)
    conv = len(sch.get(main).iter_vars) - len(reduction_vars(sch, main)) == 4
    packed = str(func.params[-1].dtype) == "uint32"
    out_loops = sch.get_loops(out)
    if packed:  # (..., word, bit): one output word per thread
        *space, word, bit = out_loops
        inner = [bit]
    else:  # float NCHW (n, o, y, x) or dense (n, o): 32 channels per thread
        space = [out_loops[0], *out_loops[2:]]
        word, channel = sch.split(out_loops[1], [None, WORD_BITS])
        inner = [channel]
    if conv:
        i, y, x = space
        _, height, width = extents(sch, space)
        rows, columns = position_tile(height, width)
        y_outer, y_inner = sch.split(y, [None, rows])
        x_outer, x_inner = sch.split(x, [None, columns])
        sch.reorder(i, y_outer, x_outer, word, y_inner, x_inner, *inner)
        block_x = sch.fuse(i, y_outer, x_outer)
        thread_x = sch.fuse(y_inner, x_inner)
    else:  # dense: positions are batch rows
        (i,) = space
        rows, columns = 1, min(extents(sch, [i])[0], TILE_THREADS)
        block_x, thread_x = sch.split(i, [None, columns])
        sch.reorder(block_x, word, thread_x, *inner)
    threads = rows * columns
    sch.bind(block_x, "blockIdx.x")
    sch.bind(word, "blockIdx.y")
    sch.bind(thread_x, "threadIdx.x")
    if packed:  # the word is assembled in a register and stored once
        store = sch.cache_write(out, 0, "local")
        sch.reverse_compute_at(store, thread_x, preserve_unit_loops=True)
        sch.decompose_reduction(out, inner[0])
    sch.unroll(inner[0])

    # the 32 counters of the thread, in registers, over the whole reduction
    sch.compute_at(main, thread_x, preserve_unit_loops=True)
    sch.set_scope(main, 0, "local")
    reductions = len(reduction_vars(sch, main))
    loops = sch.get_loops(main)
    o = loops[-reductions - 1]
    if not isinstance(sch.get(o).extent, tirx.IntImm):
        # a clamped last word gives a data-dependent extent (min(31, C - 1 - 32 w) + 1): a
        # constant 32 with a predicate instead, so the counters stay unrolled in registers
        try:
            sch.split(o, [1, WORD_BITS])
        except s_tir.ScheduleError:
            # TVM's region bound can come out as max(32 w, min(32 w + 31, C - 1)) + 1 -
            # min(...) (seen with a single input word), which it cannot prove <= 32: an outer
            # loop of data-dependent extent (1 at run time) keeps the 32 unrolled counters
            sch.split(o, [None, WORD_BITS])
        loops = sch.get_loops(main)
        o = loops[-reductions - 1]
    *others, rc = loops[-reductions:]  # the channel words are the innermost reduction

    # shared memory per channel word: 32 channels' weights and the input patch (all planes)
    weight_shape = [int(v) for v in func.params[1].shape]
    weight_planes = weight_shape[0] if len(weight_shape) == 5 else 1  # ternary weights: sign, nonzero
    weight_shape = weight_shape[-4:]
    data_shape = [int(v) for v in func.params[0].shape]
    taps = weight_planes * weight_shape[1] * weight_shape[2] if conv else 1
    # k-bit planes, or a ternary activation's interleaved sign and nonzero words
    planes = data_shape[0] if len(data_shape) == 5 else (2 if str(func.attrs["bnn.op"]).startswith("ternary_") else 1)
    patch = columns
    if conv:
        sh, sw = (int(v) for v in func.attrs["bnn.strides"])
        dh, dw = bitserial.kernel_dilation(func.attrs)
        patch = ((rows - 1) * sh + dh * (weight_shape[1] - 1) + 1) * ((columns - 1) * sw + dw * (weight_shape[2] - 1) + 1)
    per_word = 4 * (WORD_BITS * taps + planes * patch)
    words = extents(sch, [rc])[0]
    chunk = largest_divisor(words, max(1, SHARED_BUDGET_BYTES // per_word))
    rc_outer, rc_inner = sch.split(rc, [None, chunk])
    sch.reorder(rc_outer, *others, rc_inner, o)

    # stage weights and input words in shared memory (threads bound first: the staged region
    # is then the whole block's, not one thread's)
    weights = sch.cache_read(main, read_index(sch, main, func, 1), "shared", consumer_blocks=[main])
    if producers:
        (data,) = producers
        sch.set_scope(data, 0, "shared")
    else:
        data = sch.cache_read(main, read_index(sch, main, func, 0), "shared", consumer_blocks=[main])
    for stage in (weights, data):
        sch.compute_at(stage, rc_outer, preserve_unit_loops=True)
        cooperative_copy(sch, stage, threads)

    try:
        sch.decompose_reduction(main, rc_outer)
    except s_tir.ScheduleError:
        # the clamped last word's predicate (a min) is not affine: the zeroing then stays a
        # branch on the first reduction step (last words of channel counts not 32-multiples)
        pass
    sch.unroll(o)
    # the taps stay loops: unrolled here, nvcc hoisted their shared-memory loads into 200+
    # registers per thread (ptxas -v, 3x3 64->64 threshold conv: 214 registers unrolled, 56 not)
    shape = f"{rows}x{columns} positions" if conv else f"{columns} rows"
    plan = (
        f"{shape} x 32 channels per block, 32 counters per thread, "
        f"weights + input staged in shared memory, {words // chunk} chunk(s) of {chunk} word(s)"
    )
    return finish(sch, plan)


def dense_float(sch: s_tir.Schedule, func, op: str) -> Scheduled:
    """Dense with a float output: one thread per output unit, the input row in shared memory.
    The threads are made on the output's loops and the counter computed at the thread's loop,
    so a ternary dense's per-row nonzero counts (their own launch) may feed the output too."""
    main = main_block(sch, func)
    out = output_block(sch)
    inline_between(sch, main, out)
    i, o = sch.get_loops(out)
    units, words = extents(sch, [o, sch.get_loops(main)[-1]])
    threads = min(units, ELEMENTWISE_THREADS)
    o_outer, o_inner = sch.split(o, [None, threads])
    sch.bind(i, "blockIdx.y")
    sch.bind(o_outer, "blockIdx.x")
    sch.bind(o_inner, "threadIdx.x")
    sch.compute_at(main, o_inner, preserve_unit_loops=True)
    sch.set_scope(main, 0, "local")
    row = sch.cache_read(main, read_index(sch, main, func, 0), "shared", consumer_blocks=[main])
    sch.compute_at(row, o_inner, preserve_unit_loops=True)
    cooperative_copy(sch, row, threads)
    sch.decompose_reduction(main, sch.get_loops(main)[-1])
    return finish(sch, f"one thread per output, {threads} per block, input row ({words} words) in shared memory")


def count_nonzeros(sch: s_tir.Schedule) -> None:
    """A ternary kernel's nonzero counts per position (``bitserial.ternary_conv2d_dot``): their
    own launch, a thread per position, before the tiles that read them."""
    try:
        block = sch.get_sblock("nonzeros")
    except s_tir.ScheduleError:  # not a ternary kernel
        return
    kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
    spatial = [loop for loop, kind in zip(sch.get_loops(block), kinds) if kind == tirx.IterVar.DataPar]
    fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    thread_x = thread_loop(sch, fused, min(ELEMENTWISE_THREADS, extents(sch, [fused])[0]))
    register = sch.cache_write(block, 0, "local")  # the count in a register, stored once
    sch.reverse_compute_at(register, thread_x, preserve_unit_loops=True)


def per_output(sch: s_tir.Schedule, func, op: str) -> Scheduled:
    """One thread per output element (pack_sign, unpack_sign, max_pool_or, float pools,
    anything else): intermediate steps inlined, reductions accumulated in a register (an
    intermediate reduction, like avg_pool's sum before its division, in the thread's own
    registers too)."""
    out = output_block(sch)
    inner_reductions = []
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(block).same_as(sch.get(out)):
            continue
        if reduction_vars(sch, block):
            inner_reductions.append(block)
        else:
            sch.compute_inline(block)
    loops = sch.get_loops(out)
    kinds = [iv.iter_type for iv in sch.get(out).iter_vars]
    spatial = [loop for loop, kind in zip(loops, kinds) if kind == tirx.IterVar.DataPar]
    reduce = [loop for loop, kind in zip(loops, kinds) if kind != tirx.IterVar.DataPar]
    if op.startswith("pack_") and len(spatial) >= 4:
        # NCHW float in, channels-last words out: channel words outermost, so consecutive
        # threads take consecutive columns and each of a word's 32 channel reads coalesces
        spatial = [spatial[-1], *spatial[:-1]]
    sch.reorder(*spatial, *reduce)
    fused = sch.fuse(*spatial)
    threads = min(ELEMENTWISE_THREADS, extents(sch, [fused])[0])
    thread_x = thread_loop(sch, fused, threads)
    for block in inner_reductions:
        sch.compute_at(block, thread_x)
        sch.set_scope(block, 0, "local")
    if reduce:
        register = sch.cache_write(out, 0, "local")
        sch.reverse_compute_at(register, thread_x, preserve_unit_loops=True)
        sch.decompose_reduction(out, reduce[0])
        for loop in reduce:
            sch.unroll(loop)
    return finish(sch, f"one thread per output element, {threads} per block")


def apply(sch: s_tir.Schedule, func, op: str) -> Scheduled:
    """Pick the kernel's schedule by its structure (the passes keep adding epilogues: float,
    thresholds, lookup tables), not by its name: a popcount reduction over the weights makes a
    tiled kernel, anything else gets a thread per output element."""
    main = main_block(sch, func)
    if main is None or "_attention_" in op:
        # attention scores, bits and context (two activations, a few words per output): a thread per output, its
        # counter in a register; no staged operand yet
        return per_output(sch, func, op)
    count_nonzeros(sch)
    spatial = len(sch.get(main).iter_vars) - len(reduction_vars(sch, main))
    packed_output = str(func.params[-1].dtype) == "uint32"
    if spatial == 4 or packed_output:
        return word_tiles(sch, func, op)
    return dense_float(sch, func, op)


def schedule(func: tirx.PrimFunc, op: str, target=None) -> Scheduled:
    """The CUDA schedule of one kernel tagged ``bnn.op`` = ``op`` (``schedules.schedule_module``'s
    per-family entry point). With a ``target``, also installs the nvcc callback for its arch."""
    if target is not None:
        install_nvcc_callback(str(target.attrs["arch"]) if "arch" in target.attrs else None)
    return apply(s_tir.Schedule(func), func, op)


WINDOW_LIMIT = 64  # values per output that one thread reduces alone (a 7x7 global pool: 49)


def is_window_reduction(func: tirx.PrimFunc) -> bool:
    """Whether every reduction of ``func`` sums (or maxes) a window of at most ``WINDOW_LIMIT``
    values of one input: pools and small means, not convs or matmuls (two inputs)."""
    sch = s_tir.Schedule(func)
    found = False
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        reductions = reduction_vars(sch, block)
        if not reductions:
            continue
        found = True
        window = 1
        for iv in reductions:
            if not isinstance(iv.dom.extent, tirx.IntImm):
                return False
            window *= int(iv.dom.extent)
        own = region_buffer(sch.get(block).writes[0])
        inputs = {region_buffer(r).name for r in sch.get(block).reads if not region_buffer(r).same_as(own)}
        if window > WINDOW_LIMIT or len(inputs) != 1:
            return False
    return found


def schedule_float_windows(mod, target, plans: dict | None = None):
    """Float pools get a thread per output (``per_output``). dlight's default rules spread such
    small reductions across a block's threads: Bi-Real ResNet-18's 2x2 average pools took 3.4 of
    its 8.6 ms at batch 64 on an H100 that way. The module is legalized first, with the passes
    ``tvm.compile``'s pipeline would run; every other float op stays with dlight."""
    mod = legalize(mod, target)
    for gvar, func in list(mod.functions_items()):
        if not isinstance(func, tirx.PrimFunc) or SCHEDULED_ATTR in (func.attrs or {}):
            continue
        if not is_window_reduction(func):
            continue
        sch = s_tir.Schedule(func)
        result = per_output(sch, func, gvar.name_hint)
        mod[gvar] = result.func
        if plans is not None:
            plans[gvar.name_hint] = f"float: {result.plan}"
    return mod


def schedule_cuda(mod, spec, plans: dict | None = None):
    """Schedule every ``bnn.op`` kernel of the Relax module ``mod`` for CUDA.

    The compiler goes through ``schedules.schedule_module``, which calls :func:`schedule` per
    kernel; this is the same for a module on its own. The kernels keep their signatures (no
    constant changes layout), so they are replaced in place. Float operators are left to
    ``tvm.compile``'s CUDA pipeline (dlight's GPU rules).
    """
    import tvm

    install_nvcc_callback(getattr(spec, "arch", None))
    functions = {}
    for gvar, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and func.attrs is not None and "bnn.op" in func.attrs:
            result = schedule(func, str(func.attrs["bnn.op"]))
            func = result.func
            if plans is not None:
                plans[gvar.name_hint] = result.plan
        functions[gvar] = func
    return tvm.IRModule(functions, attrs=mod.attrs, global_infos=mod.global_infos)


# --------------------------------------------------------------------------------------------
# Checking a schedule without a GPU


def emulate(func: tirx.PrimFunc, op: str) -> tirx.PrimFunc:
    """The CUDA schedule of ``func`` replayed without thread bindings and shared-memory scopes:
    the same tiles, loop order, staging copies, predicates and register accumulators, as a
    sequential loop nest that compiles for the CPU. Comparing it with the unscheduled compute
    checks everything in the schedule except the GPU's thread semantics."""
    scheduled = s_tir.Schedule(func)
    apply(scheduled, func, op)
    kept = [inst for inst in scheduled.trace.insts if not _is_gpu_only(inst)]
    replay = s_tir.Schedule(func)
    s_tir.schedule.Trace(kept, {}).apply_to_schedule(replay, remove_postproc=False)
    return replay.mod["main"]


def _is_gpu_only(inst) -> bool:
    name = inst.kind.name
    if name == "Bind":
        return True
    return name == "SetScope" and str(inst.attrs[-1]) == "shared"


# --------------------------------------------------------------------------------------------
# The CUDA toolkit: nvcc, its root, device code


def nvcc_path() -> str | None:
    """nvcc: on PATH, else in the toolkit root."""
    found = shutil.which("nvcc")
    if found is None and cuda_root() is not None:
        found = os.path.join(cuda_root(), "bin", "nvcc")
    return found


NO_FAST_MATH = "TVM_CUDA_NVCC_NO_FAST_MATH"


@contextlib.contextmanager
def toolkit_environment():
    """``CUDA_PATH`` set to the toolkit root (TVM's helpers otherwise guess it from nvcc's
    folder, wrongly for a wrapper script), nvcc reachable by name (TVM runs ``nvcc``), and
    without TVM's ``--use_fast_math``: its approximate division put a k-bit conv's ``d / 3``
    one ulp off the CPU's on an H100, and flushing denormals to zero turns a tiny negative
    binarizer input into -0, which ``x >= 0`` sends to +1."""
    root = cuda_root()
    if root is None:
        raise FileNotFoundError("no CUDA toolkit: no nvcc on PATH, in $CUDA_PATH or in /usr/local/cuda")
    saved = {key: os.environ.get(key) for key in ("CUDA_PATH", "PATH", NO_FAST_MATH)}
    os.environ.setdefault("CUDA_PATH", root)
    os.environ[NO_FAST_MATH] = "1"  # read by tvm.support.nvcc.compile_cuda
    if shutil.which("nvcc") is None:
        os.environ["PATH"] = os.path.join(root, "bin") + os.pathsep + os.environ.get("PATH", "")
    try:
        yield root
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@functools.cache
def cuda_root() -> str | None:
    """The CUDA toolkit root: ``CUDA_PATH`` if it holds ``bin/nvcc``, else the ``TOP`` nvcc
    reports for itself (right through symlinks and wrapper scripts), else ``/usr/local/cuda``."""
    env = os.environ.get("CUDA_PATH")
    if env and os.path.isfile(os.path.join(env, "bin", "nvcc")):
        return env
    nvcc = shutil.which("nvcc")
    if nvcc is not None:
        try:
            dry = subprocess.run(
                [nvcc, "--dryrun", "-x", "cu", "-E", os.devnull], capture_output=True, text=True, timeout=30, check=False
            )
            match = re.search(r"^#\$ TOP=(.+)$", dry.stdout + dry.stderr, re.MULTILINE)
            if match:
                root = os.path.realpath(match.group(1).strip())
                if os.path.isfile(os.path.join(root, "bin", "nvcc")):
                    return root
        except (OSError, subprocess.SubprocessError):
            pass
        real = os.path.realpath(nvcc)
        root = os.path.dirname(os.path.dirname(real))
        if os.path.isfile(os.path.join(root, "include", "cuda.h")):
            return root
    if os.path.isfile("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    return None


def device_code_arch(target_arch: str | None) -> list[str]:
    """nvcc ``-gencode`` options: machine code for the target's arch plus its PTX, which the
    driver can JIT for newer GPUs (sm_80 code alone does not run on sm_90)."""
    digits = (target_arch or "sm_80")[len("sm_") :]
    return ["-gencode", f"arch=compute_{digits},code=[sm_{digits},compute_{digits}]"]


def compile_ptx(source: str, arch: str = "sm_80") -> str:
    """CUDA source -> PTX with nvcc (the check that generated code is valid CUDA, without a GPU).

    Raises ``RuntimeError`` with nvcc's message when the source does not compile, and
    ``FileNotFoundError`` when no CUDA toolkit is installed.
    """
    import tvm
    from tvm.support import nvcc as tvm_nvcc

    with toolkit_environment(), tvm.target.Target({"kind": "cuda", "arch": arch}):
        ptx = tvm_nvcc.compile_cuda(source, "ptx", arch=arch, compiler="nvcc")
    return bytes(ptx).decode()


_installed_arch: list[str | None] = []


def callback_arch(default: str | None) -> str | None:
    """The arch to build device code for: the target's while ``tvm.compile`` runs (on a GPU
    machine TVM builds device code right away), else the GPU's when a saved module carrying
    CUDA source is loaded, else ``default``."""
    import tvm

    target = tvm.target.Target.current(allow_none=True)
    if target is not None and "arch" in target.attrs:
        return str(target.attrs["arch"])
    if tvm.cuda(0).exist:
        return "sm_" + tvm.cuda(0).compute_version.replace(".", "")
    return default


def install_nvcc_callback(default_arch: str | None = None) -> bool:
    """Make ``tvm.compile`` turn CUDA source into a fatbin with nvcc (TVM's own callback
    defaults to NVRTC, which needs the ``cuda-bindings`` package, and builds SASS only).

    Returns False, installing nothing, when no CUDA toolkit is found: ``tvm.compile`` then
    still succeeds but its module holds only CUDA source, which cannot be loaded on a GPU.
    """
    if cuda_root() is None:
        return False
    if _installed_arch:
        _installed_arch[0] = default_arch
        return True
    import tvm
    import tvm.support.nvcc as tvm_nvcc  # registers TVM's callback first, so ours overrides it
    import tvm_ffi

    _installed_arch.append(default_arch)

    def compile_to_fatbin(code):
        arch = callback_arch(_installed_arch[0]) or "sm_80"
        # TVM's nvcc helper reads the current target for the compute version
        with toolkit_environment(), tvm.target.Target({"kind": "cuda", "arch": arch}):
            return tvm_nvcc.compile_cuda(code, "fatbin", arch=device_code_arch(arch), compiler="nvcc")

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_to_fatbin, override=True)
    return True


def cuda_source(executable) -> str:
    """The CUDA C source of a compiled module (a ``VMExecutable`` or a runtime module)."""
    module = getattr(executable, "mod", executable)
    pending = [module]
    while pending:
        current = pending.pop()
        if current.kind == "cuda":
            return current.inspect_source("cuda")
        pending.extend(current.imports)
    raise ValueError("the module has no CUDA device code (was it compiled for a cuda target?)")
