"""Decisions through a max pool: a folded chain with a max inside becomes an OR of thresholded bits.

A 2-D max pool between a binary kernel and a binarizer (``pooled_decisions``), and PointNet's max
over the points of a binary dense's rows (``pooled_point_decisions``):

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

from ..common import pack_bits
from .chain import Chain, Step
from .rounding import OPEN_HIGH, OPEN_LOW


def never_decreases(step: Step) -> bool:
    """Whether ``y -> step(y)`` is non-decreasing in float32 (rounding is monotone)."""
    if step.op in ("add", "subtract", "maximum", "minimum"):
        return True
    if step.op in ("multiply", "prelu"):
        return bool(np.all(step.const >= 0))
    if step.op == "divide":
        return bool(np.all(step.const > 0))
    return False


def pooled_decisions(chain: Chain, steps_after: int, interval):
    """``(refusal, interval, flip words)``: how a max pool inside a folded chain becomes a
    pool of thresholded bits, or why it cannot (``refusal``).

    ``binarize(g2(maxpool(g1(d))))``: when ``g1`` (the scale and the steps before the pool) never
    decreases, in float32 as in exact arithmetic, ``maxpool(g1(d)) = g1(max d)``, so the decision
    is the interval's on ``max d``. An interval open upwards (``max d >= low``) holds exactly when
    some ``d >= low`` in the window: threshold every position, then OR the bits (the pool's
    -inf padding is a 0 bit). One open downwards (a negative batch-norm gamma: ``max d <= high``)
    holds when every ``d <= high``: threshold the complement ``d > high``, OR, flip the bit back.
    """
    before = chain.steps[: len(chain.steps) - steps_after]
    if not (chain.scale is None or bool(np.all(chain.scale >= 0))) or not all(never_decreases(s) for s in before):
        return "a max pool after a float op that can decrease (negative scale) stays float", interval, None
    low, high = (v.astype(np.int64) for v in interval)
    downwards = (low == OPEN_LOW) & (high < OPEN_HIGH) & (low <= high)
    upwards_or_constant = (high == OPEN_HIGH) | (low > high)
    if not np.all(downwards | upwards_or_constant):
        return "a max pool before a float op that keeps only a bounded range of values stays float", interval, None
    low = np.where(downwards, high + 1, low)
    high = np.where(downwards, OPEN_HIGH, high)
    flip = pack_bits(np.where(downwards, 1.0, -1.0)) if np.any(downwards) else None
    return None, (low.astype(np.int32), high.astype(np.int32)), flip


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
