"""Float max pooling for CPUs: clamped windows, one row of the image at a time.

TVM's lowering of ``nn.max_pool2d`` first writes a copy of the input padded with -FLT_MAX, then
reads every window tap from it with scalar loads (a stride-2 window defeats vectorisation). For
the 3x3 stride-2 pool after a ResNet stem (64x112x112) that is 0.6 ms, most of it the padded copy.

Here a window tap outside the input reads the nearest tap inside it instead of a pad value. That
changes no result: the substitute tap belongs to the same window, and max is idempotent; it only
requires every window to overlap the input, which ``clamped_windows_apply`` checks (it holds for
every pool with ``pad < kernel``). Each output row first takes the max of its input rows, as
vectors along the row, into a local row buffer (``vertical``), then the max across each window's
columns (``pool``). Max is exact in any order, so the result equals the reference bit for bit.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, te, tirx

from . import cpu, float_ops
from .calls import rewrite_calls

MAX_POOL = "relax.nn.max_pool2d"


def window_overlaps(size_in: int, size_out: int, kernel: int, stride: int, pad_before: int) -> bool:
    """Whether every window along one axis has at least one tap inside ``[0, size_in)``."""
    return all(o * stride - pad_before + kernel - 1 >= 0 and o * stride - pad_before < size_in for o in range(size_out))


def clamped_windows_apply(call) -> bool:
    """A float32 NCHW max pool, no dilation, whose windows all overlap the input."""
    attrs = call.attrs
    x, out = call.args[0], call
    if str(attrs.layout) != "NCHW" or str(attrs.out_layout) != "NCHW" or any(int(d) != 1 for d in attrs.dilation):
        return False
    if str(x.ty.dtype) != "float32" or len(x.ty.shape) != 4:
        return False
    try:
        in_hw = [int(v) for v in x.ty.shape.values[2:]]
        out_hw = [int(v) for v in out.ty.shape.values[2:]]
    except (TypeError, AttributeError):  # symbolic shapes
        return False
    kernel, strides, padding = (list(int(v) for v in vs) for vs in (attrs.pool_size, attrs.strides, attrs.padding))
    return all(window_overlaps(in_hw[a], out_hw[a], kernel[a], strides[a], padding[a]) for a in range(2))


def max_pool2d_nchw(x: te.Tensor, out_hw, kernel, strides, padding):
    """The pool with clamped window taps (module doc): ``vertical`` rows, then ``pool``."""
    n, c, h, w = (int(v) for v in x.shape)

    def clamp(index, size):
        return tirx.max(tirx.min(index, size - 1), 0)

    def vertical(i, ch, y, k):
        taps = [x[i, ch, clamp(y * strides[0] - padding[0] + r, h), k] for r in range(kernel[0])]
        return _max_of(taps)

    rows = te.compute((n, c, out_hw[0], w), vertical, name="vertical")

    def pool(i, ch, y, j):
        return _max_of([rows[i, ch, y, clamp(j * strides[1] - padding[1] + s, w)] for s in range(kernel[1])])

    return te.compute((n, c, *out_hw), pool, name="pool")


def _max_of(values):
    result = values[0]
    for value in values[1:]:
        result = tirx.max(result, value)
    return result


def schedule(func: tirx.PrimFunc, lanes32: int) -> tuple[tirx.PrimFunc, str]:
    """Planes in parallel (for pools with enough outputs); per output row, its input rows' max
    as vectors into a local row."""
    sch = s_tir.Schedule(func)
    pool = sch.get_sblock("pool")
    n, c, y, _ = sch.get_loops(pool)
    cpu.parallel(sch, sch.fuse(n, c), cpu.block_work(sch, pool))
    vertical = sch.get_sblock("vertical")
    sch.compute_at(vertical, y)
    sch.set_scope(vertical, 0, "local")
    column = sch.get_loops(vertical)[-1]
    lanes = cpu.power_of_two_divisor(cpu.extents(sch, [column])[0], lanes32)
    if lanes > 1:
        sch.vectorize(sch.split(column, [None, lanes])[1])
    return sch.mod["main"], f"float: max pool by clamped windows, planes in parallel, rows max as {lanes}-lane vectors"


def rewrite_max_pools(mod: tvm.IRModule, lanes32: int, plans: dict | None = None) -> tvm.IRModule:
    """Replace the max pools of ``mod``'s Relax functions that ``clamped_windows_apply`` accepts
    by scheduled kernels (tagged scheduled, so the float op schedules leave them alone)."""
    op = tvm.ir.Op.get(MAX_POOL)

    def rewrite(mutator, call):
        if call.op != op or not clamped_windows_apply(call):
            return None
        attrs = call.attrs
        out_hw = [int(v) for v in call.ty.shape.values[2:]]
        kernel, strides, padding = ([int(v) for v in vs] for vs in (attrs.pool_size, attrs.strides, attrs.padding))
        x = te.placeholder([int(v) for v in call.args[0].ty.shape.values], "float32", "x")
        func, plan = schedule(te.create_prim_func([x, max_pool2d_nchw(x, out_hw, kernel, strides, padding)]), lanes32)
        return float_ops.call_hand_written(mutator, func, plan, "max_pool2d", [call.args[0]], call.ty, plans)

    return rewrite_calls(mod, rewrite)
