"""The integers a binary kernel returns, and the float32 values the graph computes from them.

A binary conv or dense computes an exact integer ``d`` in ``-levels * taps .. levels * taps`` (of
one parity where every output has all its taps); the float graph computes ``d`` (or ``d / levels``,
``d * s``) times a weight scale, then per-channel float ops (``analysis.chain``). Here: which
integers are reachable (``candidates_of``, ``result_parity``), how far the float graph's own sum
can be from the kernel's value (``ValueModel``'s rounding ``error``: ``sum_rounding_error``,
``weight_scale_error``), the chain evaluated in float32 at every reachable integer
(``chain_values``), and the interval of integers on which it decides +1 (``decision_interval``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..common import RuleContext, shape_of
from .weights import DIFFERENCE, split_halves


# The open ends of a decision interval: beyond every integer a kernel returns (|d| <= levels *
# taps, far below 2^29) yet far from int32's limits. Once a schedule inlines d = taps - 2 m into
# ``low <= d <= high``, TVM's simplifier moves terms across the comparison (``taps <= high +
# 2 m``), which overflowed at INT32_MAX: wrong bits on CUDA, whose schedule inlines it.
OPEN_LOW, OPEN_HIGH = -(1 << 30), 1 << 30


SCALE_INPUT = {"binary_conv2d": 5, "binary_dense": 2, "multibit_conv2d": 3,  # input holding alpha
               "ternary_conv2d": 2, "ternary_dense": 2}


def integer_inputs(name: str, attrs: dict) -> int:
    """How many of a binary kernel's inputs its integer result reads (the weight scale, if any,
    follows them): ``SCALE_INPUT``, and for a binary dense with ternary weights one more, the
    per-output ``nonzeros - taps`` (``bitserial.binary_dense_dot``)."""
    return SCALE_INPUT[name] + int(name == "binary_dense" and "bnn.ternary_weights" in attrs)


def candidates_of(taps: int, levels: int = 1, parity: int | None = None) -> np.ndarray:
    d = np.arange(-levels * taps, levels * taps + 1, dtype=np.int64)
    return d if parity is None else d[d % 2 == parity]


def result_parity(ctx: RuleContext, source, name: str, attrs: dict, taps: int, levels: int) -> int | None:
    """The parity of every integer a binary kernel returns, when they share one: ``d`` sums ±1
    over the taps inside the input (a zero-padded tap adds 0), so ``d`` has the parity of that
    count. Without zero padding (or with an explicit ±1 pad) every position has all ``taps``;
    with an even number of input channels every count is even. Odd ``d`` are then unreachable,
    and a threshold near one of them need not be refused (a BN folded into the weights by
    PyTorch's exporter puts thresholds anywhere)."""
    # a ternary input's or weight's zeros drop out of the sum, a k-bit input's (even a 1-bit
    # Quant's 0/1) sums any integers: any count of taps
    if levels != 1 or name.startswith(("ternary_", "multibit_")) or "bnn.ternary_weights" in attrs:
        return None
    if name == "binary_dense":
        return taps % 2
    padding = [int(p) for p in attrs.get("bnn.padding", [])]
    if int(attrs.get("bnn.pad_ones", 0)) or not any(padding):
        return taps % 2
    _, kh, kw, _ = shape_of(ctx.kernel_inputs(source)[1])  # packed weights [OC, KH, KW, CW]
    return 0 if (taps // (kh * kw)) % 2 == 0 else None


@dataclass(frozen=True)
class ValueModel:
    """How a kernel's float value follows from its integer ``d`` (``chain_values``)."""

    taps: int
    scale: np.ndarray | None  # ±alpha weights' per-channel scale
    error: np.ndarray | None  # bound of the float graph's distance from it, per channel
    levels: int  # the integer result lies in -levels * taps .. levels * taps
    parity: int | None  # of every integer the kernel returns, when they share one
    activation_scale: float | None = None  # a Quant input's scale: d * s instead of d / levels


def kernel_value_model(ctx: RuleContext, source, name: str, attrs: dict, channels: int) -> ValueModel:
    """How the kernel's float value follows from its integer.

    ``error`` bounds how far the float graph's own conv can be from that value; it is zero
    unless the weights carry a non-power-of-two scale or the input has k-bit levels: the float
    conv sums rounded terms (DoReFa's ``q/L * w``, a ``Quant``'s ``((q - z) * s) * w``) where
    the kernel rounds its exact sum once (``d / L`` or ``d * s``, then ``* alpha``).
    """
    taps = int(attrs["bnn.taps"])
    levels = int(attrs.get("bnn.levels", 1))
    parity = result_parity(ctx, source, name, attrs, taps, levels)
    inputs = ctx.kernel_inputs(source)
    count = integer_inputs(name, attrs)
    scale = ctx.constant(inputs[count]) if len(inputs) > count else None
    activation_scale = float(attrs["bnn.activation_scale"]) if "bnn.activation_scale" in attrs else None
    if activation_scale is not None:
        error = quant_input_error(taps, levels, activation_scale, scale, channels)
    elif levels == 1:
        error = weight_scale_error(scale, taps) if scale is not None else None
    else:
        # terms q/L * w: each q/L rounded once, and the kernel rounds d/L and d/L * alpha
        error = sum_rounding_error(taps, np.ones(channels) if scale is None else scale, roundings=3)
    if "bnn.weight_deviation" in attrs:  # weights a few ulp off ±alpha (see analysis.weights.BinaryWeights), times |x|'s bound
        largest_input = 1.0 if activation_scale is None else levels * abs(activation_scale)
        error = error + np.array([float(v) for v in attrs["bnn.weight_deviation"]]) * largest_input
    return ValueModel(taps, scale, error, levels, parity, activation_scale)


def quant_input_error(taps: int, levels: int, activation_scale: float, scale, channels: int) -> np.ndarray:
    """The error band of a conv on a ``Quant``'s planes: terms ``((q - z) * s) * w`` of size at
    most ``levels * |s| * alpha``, each ``(q - z) * s`` rounded once, the kernel's ``d * s`` and
    ``* alpha`` once each (as DoReFa's ``q / L``). None of it rounds where s and alpha are powers
    of two and every partial sum is an integer multiple of ``s * alpha`` below 2^24 of them."""
    alpha = np.ones(channels) if scale is None else np.asarray(scale, np.float64)
    exact = is_power_of_two(np.array([activation_scale])) and (scale is None or is_power_of_two(scale))
    if exact and levels * taps < 2**24:
        return np.zeros(channels)
    return sum_rounding_error(taps, levels * abs(activation_scale) * alpha, roundings=3)


def chain_values(steps, channels: int, model: "ValueModel", every_integer: bool = False) -> list[np.ndarray]:
    """float32 ``[channels, candidates]``: the chain at every integer ``d`` the kernel can produce
    (``candidates_of``: ``-levels * taps .. levels * taps``, of one ``parity`` when it has one;
    ``every_integer``: all of them, one column each, as a lookup table indexes them).

    The kernel's value is ``activation(d) * scale``: ``activation(d)`` is ``d`` for binary inputs,
    ``d / levels`` for DoReFa's k-bit ones (``levels = 2^k - 1``), ``d * activation_scale`` for a
    ``Quant``'s (``levels``: its largest ``|q - z|``); ±alpha weights have a ``scale``. With a
    rounding ``error`` band (the float conv's possible distance from it) the chain is also
    evaluated at both ends of the band, rounded outwards, and all three are returned.
    """
    taps, scale, error, levels, activation_scale = (model.taps, model.scale, model.error, model.levels,
                                                    model.activation_scale)
    candidates = candidates_of(taps, levels, None if every_integer else model.parity)
    d = np.broadcast_to(candidates.astype(np.float32), (channels, candidates.size))
    if activation_scale is not None:
        start = (d * np.float32(activation_scale)).astype(np.float32)
    else:
        start = d if levels == 1 else (d / np.float32(levels)).astype(np.float32)
    start = start if scale is None else (start * scale[:, None]).astype(np.float32)
    starts = [start]
    if error is not None and np.any(error > 0):
        band = error[:, None]
        starts.append(np.nextafter((start - band).astype(np.float32), np.float32(-np.inf)))
        starts.append(np.nextafter((start + band).astype(np.float32), np.float32(np.inf)))
    results = []
    with np.errstate(all="ignore"):
        for y in starts:
            for step in steps:
                y = step(y).astype(np.float32)
            results.append(y)
    return results


def decision_interval(steps, channels: int, model: "ValueModel", strict: bool = False):
    """Per channel ``[low, high]`` such that ``chain(d) >= 0`` (``strict``: ``> 0``) iff
    ``low <= d <= high``; None if no interval says it (not monotone, or a value within rounding
    error of the threshold)."""
    candidates = candidates_of(model.taps, model.levels, model.parity)
    decisions = [y > 0 if strict else y >= 0 for y in chain_values(steps, channels, model)]
    if any(np.any(other != decisions[0]) for other in decisions[1:]):
        return None
    decide = decisions[0]
    low = np.full(channels, 1, dtype=np.int64)
    high = np.full(channels, 0, dtype=np.int64)  # empty interval: never +1
    for c in range(channels):
        hits = np.flatnonzero(decide[c])
        if hits.size == 0:
            continue
        if hits[-1] - hits[0] + 1 != hits.size:
            return None  # not an interval: the chain is not monotone, keep it in float
        low[c] = OPEN_LOW if hits[0] == 0 else candidates[hits[0]]
        high[c] = OPEN_HIGH if hits[-1] == candidates.size - 1 else candidates[hits[-1]]
    return low.astype(np.int32), high.astype(np.int32)


def sum_rounding_error(taps: int, magnitude: np.ndarray, roundings: int) -> np.ndarray:
    """How far a float32 sum of ``taps`` terms of size at most ``magnitude`` can be from the exact
    sum, whatever the summation order (Higham: ``gamma_K * K * m``, ``gamma_K = K u / (1 - K u)``,
    u = 2^-24), plus ``roundings`` more roundings of each term or of the kernel's own value."""
    u = 2.0**-24
    gamma = taps * u / (1 - taps * u)
    return (gamma + roundings * u) * taps * np.asarray(magnitude, np.float64)


def weight_scale_error(scale: np.ndarray | None, taps: int) -> np.ndarray:
    """Per channel, how far the float conv's sum of ``taps`` terms ``±alpha`` can be from the
    kernel's ``alpha * d``; zero for powers of two, where both are exact."""
    if scale is None or is_power_of_two(scale):
        return np.zeros(0 if scale is None else scale.shape, np.float64)
    return sum_rounding_error(taps, scale, roundings=1)


def is_power_of_two(values: np.ndarray) -> bool:
    """Scales that multiply exactly: float rounding of ``d * s`` then equals the float conv's sum."""
    mantissa, _ = np.frexp(np.abs(values.astype(np.float64)))
    return bool(np.all(values != 0) and np.all(mantissa == 0.5))


def asymmetric_margin(plus: np.ndarray, minus: np.ndarray, positives: np.ndarray, negatives: np.ndarray,
                      taps: int, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Per channel, whether a decision ``low <= y <= high`` on the value ``y = b * P - a * N`` of
    a conv with TTQ's ``{-a, 0, +b}`` weights (``plus`` b, ``minus`` a, per channel) is the
    float graph's whatever order either side sums in: no reachable exact value lies within the
    rounding band of a finite bound. Reachable: every integer ``|P| <= positives``, ``|N| <=
    negatives`` (a superset: parity and zero padding left out). The band ``(gamma_K + 3u) * K *
    max(a, b)`` bounds both the float conv's sum of ``K`` exact terms ``±a, ±b, 0`` and the
    kernel's ``b * P - a * N`` (three roundings). For each bound ``t`` and each ``P`` the nearest
    value is at ``N = (b * P - t) / a`` rounded down or up: O(taps) per channel. Where ``a`` and
    ``b`` are integer multiples of one power of two ``g`` and ``(|P| b + |N| a) / g < 2^24``,
    every partial sum on either side is exact: both compute the exact value, proven at once."""
    band = sum_rounding_error(taps, np.maximum(plus, minus).astype(np.float64), roundings=3)
    proven = on_common_grid(plus, minus, positives, negatives)
    for o in np.flatnonzero(~proven):
        proven[o] = True
        b, a = float(plus[o]), float(minus[o])
        p = np.arange(-positives[o], positives[o] + 1, dtype=np.float64)
        for t in (float(low[o]), float(high[o])):
            if not np.isfinite(t):
                continue
            if a > 0:
                centre = (b * p - t) / a
                n = np.clip(np.stack([np.floor(centre), np.ceil(centre)]), -negatives[o], negatives[o])
            else:
                n = np.zeros((1, p.size))
            distance = np.abs(b * p - a * n - t).min()
            # the float32 bound is the first value decided otherwise: one float32 step of slack
            slack = float(np.spacing(np.float32(abs(t)))) + band[o] * 2.0**-20
            proven[o] &= bool(distance > band[o] + slack)
    return proven


@dataclass(frozen=True)
class AsymmetricValue:
    """What ``asymmetric_margin`` needs of a TTQ conv's ``b * P - a * N``."""

    plus: np.ndarray  # b [OC]
    minus: np.ndarray  # a [OC]
    positives: np.ndarray  # positive taps per channel
    negatives: np.ndarray  # negative taps per channel
    taps: int


def asymmetric_value(ctx: RuleContext, expr) -> AsymmetricValue | None:
    """The TTQ conv (or dense) whose ``b * P - a * N`` ``expr`` is (a ``DIFFERENCE`` kernel with
    no steps yet, on a kernel whose ``2 * OC`` channels are ``b * P`` and ``a * N``), else None."""
    found = ctx.bnn_kernel(expr)
    if found is None or found[0] != DIFFERENCE or "bnn.epilogue" in found[1]:
        return None
    (halves,) = ctx.kernel_inputs(expr)
    name, attrs = ctx.bnn_kernel(halves)
    inputs = ctx.kernel_inputs(halves)
    scale = ctx.constant(inputs[integer_inputs(name, attrs)])
    nonzero = ctx.constant(inputs[1])[1]  # the weights' nonzero plane [2 * OC, ...]
    counts = np.unpackbits(nonzero.reshape(len(nonzero), -1).view(np.uint8), axis=1).sum(axis=1).astype(np.int64)
    (plus, minus), (positives, negatives) = split_halves(scale), split_halves(counts)
    return AsymmetricValue(plus, minus, positives, negatives, int(attrs["bnn.taps"]))


def on_common_grid(plus: np.ndarray, minus: np.ndarray, positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """Per channel, whether ``b`` and ``a`` are integer multiples of their largest common power of
    two ``g`` with ``positives * b + negatives * a < 2^24 g``: every sum of ``±a, ±b`` terms (and
    ``b * P``, ``a * N``, their difference) is then an exactly representable multiple of ``g``."""
    def lowest_bit(v):  # the largest power of two dividing v (float32: a 24-bit mantissa), inf for 0
        mantissa, exponent = np.frexp(v.astype(np.float64))
        integer = (mantissa * 2.0**24).astype(np.int64)
        trailing = np.where(integer == 0, 0, np.log2(integer & -integer)).astype(np.int64)
        return np.where(v == 0, np.inf, np.ldexp(1.0, exponent - 24 + trailing))

    grid = np.minimum(lowest_bit(plus), lowest_bit(minus))
    largest = positives * plus.astype(np.float64) + negatives * minus.astype(np.float64)
    return np.isfinite(grid) & (largest < 2.0**24 * np.where(np.isfinite(grid), grid, 1.0))
