"""Max over the points of a binary dense's rows, before a binarizer: an OR of thresholded bits.

PointNet's global feature is ``m[b, c] = max_n g(d[b*N + n, c])``: a binary dense over the
``B*N`` point rows (integer result ``d``), its per-channel float chain ``g1`` (scale, batch
norm), the max over the ``N`` points, and (BiPointNet) a binarizer of ``g2(m)``. Where ``g1`` is
monotone in channel ``c`` (every step is, in float32 as in exact arithmetic, since rounding is
monotone), the max picks the value of an extreme ``d``:

    non-decreasing g1:  max_n g1(d_n) = g1(max_n d_n)
    non-increasing g1:  max_n g1(d_n) = g1(min_n d_n)

and ``FoldThresholds``' decision interval on ``d`` (the whole chain, evaluated at every integer
in ONNX Runtime's order) applies to that extreme ``p``. A half-open interval then becomes a
test on the points' bits, exactly:

    p = max d,  p >= low   <=>  some d >= low            : OR of (d >= low)
    p = max d,  p <= high  <=>  not (some d > high)      : OR of (d > high), flipped
    p = min d,  p >= low   <=>  not (some d < low)       : OR of (d <= low - 1), flipped
    p = min d,  p <= high  <=>  some d <= high           : OR of (d <= high)

so the binary dense thresholds every point row (one packed word per 32 channels) and one kernel
ORs the ``N`` rows of each sample, XORing the flipped channels' words: the ``[B*N, C]`` float
result and its max never exist. A bounded interval (a clamp after the max keeping a middle band)
or a non-monotone step keeps the max float.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, te, tirx

from schedules.bitserial import WORD_DTYPE

from .common import RuleContext, op_name, pack_bits, shape_of

POINTS_OR = "points_max_or"


def points_max_rows(ctx: RuleContext, node):
    """The ``[B*N, C]`` rows whose ``[B, N, C]`` view ``node`` (a call) takes the max over the
    points of (``max(view, axis=1)``), or None."""
    if op_name(node) != "relax.max" or bool(node.attrs.keepdims) or node.attrs.axis is None:
        return None
    if [int(a) for a in node.attrs.axis] not in ([1], [-2]):
        return None
    view = ctx.producer(node.args[0])
    if op_name(view) != "relax.reshape" or len(shape_of(node.args[0])) != 3:
        return None
    rows = view.args[0]
    b, n, c = shape_of(node.args[0])
    return rows if shape_of(rows) == (b * n, c) else None


def step_direction(step) -> np.ndarray | None:
    """Per channel +1 where ``step`` never decreases in float32, -1 where it never increases;
    None where it is neither (a negative PReLU slope, a reciprocal)."""
    if step.op in ("add", "subtract", "maximum", "minimum"):
        return np.ones(step.const.shape, np.int8)
    if step.op == "rsubtract":
        return -np.ones(step.const.shape, np.int8)
    if step.op == "multiply":  # a zero factor is constant: either way
        return np.where(step.const < 0, -1, 1).astype(np.int8)
    if step.op == "divide" and bool(np.all(step.const != 0)):
        return np.where(step.const < 0, -1, 1).astype(np.int8)
    if step.op == "prelu" and bool(np.all(step.const >= 0)):
        return np.ones(step.const.shape, np.int8)
    return None


def chain_direction(scale, steps, channels: int) -> np.ndarray | None:
    """The per-channel direction (+1/-1) of ``d -> steps(d * scale)``, or None if not monotone."""
    direction = np.ones(channels, np.int8)
    if scale is not None:
        direction = direction * np.broadcast_to(np.where(np.asarray(scale) < 0, -1, 1), (channels,)).astype(np.int8)
    for step in steps:
        found = step_direction(step)
        if found is None:
            return None
        direction = direction * found
    return direction


def pooled_point_decisions(chain, steps_after: int, interval, open_low: int, open_high: int):
    """``(refusal, interval, flip words)`` for thresholding every point row and ORing them (the
    table in the module's docstring), or why not (``refusal``)."""
    before = chain.steps[: len(chain.steps) - steps_after]
    direction = chain_direction(chain.scale, before, chain.channels)
    if direction is None:
        return "a max over points after a float op that is not monotone per channel stays float", interval, None
    low, high = (v.astype(np.int64) for v in interval)
    never = low > high
    upwards = (high >= open_high) & ~never
    downwards = (low <= open_low) & ~never & ~upwards
    if not np.all(never | upwards | downwards):
        return "a max over points before a float op that keeps only a bounded range stays float", interval, None
    rising = direction > 0
    flip = (rising & downwards) | (~rising & upwards)
    new_low = np.where(never, low, np.where(rising, np.where(upwards, low, high + 1), open_low))
    new_high = np.where(never, high, np.where(rising, open_high, np.where(upwards, low - 1, high)))
    words = pack_bits(np.where(flip, 1.0, -1.0)) if np.any(flip) else None
    return None, (new_low.astype(np.int32), new_high.astype(np.int32)), words


def points_max_or(data: te.Tensor, points: int, flip: te.Tensor | None = None) -> te.Tensor:
    """``[B*N, W]`` packed rows -> ``[B, W]``: the OR of each sample's ``points`` rows (the max of
    ±1 values is +1 iff any is), ``flip`` words XORed in (an AND for complemented channels)."""
    rows, words = (int(v) for v in data.shape)
    bitwise_or = te.comm_reducer(lambda a, b: a | b, lambda dtype: tirx.const(0, dtype), name="bitwise_or")
    n = te.reduce_axis((0, points), name="n")
    pooled = te.compute((rows // points, words), lambda b, w: bitwise_or(data[b * points + n, w], axis=[n]),
                        name="points_max_or")
    if flip is None:
        return pooled
    return te.compute(pooled.shape, lambda b, w: pooled[b, w] ^ flip[w].astype(WORD_DTYPE), name="points_max_flip")


def emit_points_or(ctx: RuleContext, packed, max_call, flip=None):
    """The kernel ORing the thresholded point rows ``packed`` of the max ``max_call``."""
    points = shape_of(max_call.args[0])[1]
    extra = [] if flip is None else [relax.const(flip)]
    pooled = ctx.builder_.emit(
        ctx.emit_kernel(lambda d, *f: points_max_or(d, points, *f), packed, *extra, op=POINTS_OR), "pooled"
    )
    ctx.fused(POINTS_OR, f"max over {points} points on packed bits", pooled)
    return pooled
