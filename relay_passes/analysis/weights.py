"""Constant weights as binary (or ternary) signs times a per-output-channel scale, or as TTQ's
asymmetric ``{-a, 0, +b}``: two ``{0, 1}`` masks, each with its own per-channel scale."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bnn_tvm.schedules import bitserial

from ..common import pack_bits, pack_planes
from ..conventions import SCALE_SPREAD


DIFFERENCE = "ttq_difference"  # the kernel computing b*P - a*N from a kernel over 2 * OC channels (AsymmetricWeights)


@dataclass(frozen=True)
class BinaryWeights:
    """Weights as ±1 ``signs`` times a per-output-channel ``scale`` (None: exactly ±1), plus per
    channel the sum over its taps of ``|w - scale * sign(w)|`` (``deviation``; None: exact).

    An exporter or TVM's constant folding computes ``alpha * sign(W)`` (and a weight
    straight-through estimator ``alpha * sign(W) - clip(W) + clip(W)``) in float32, which leaves
    some weights an ulp or two off ``±alpha``. The float conv's sum then differs from
    ``alpha * d`` by at most ``deviation`` (each activation has ``|x| <= 1``) besides rounding,
    and ``analysis.rounding.kernel_value_model`` widens its rounding band by it."""

    signs: np.ndarray  # ±1, or with ``split_scale(..., ternary=True)`` also 0
    scale: np.ndarray | None
    deviation: np.ndarray | None

    @property
    def ternary(self) -> bool:
        """Whether some weight is exactly 0 (TWN's ``{-alpha, 0, +alpha}``)."""
        return bool(np.any(self.signs == 0))

    def kernel_attrs(self) -> dict:
        """The deviation (and ternary weights) as kernel attributes (only where there is one:
        attributes are part of a tuning record's workload)."""
        attrs = {} if self.deviation is None else {"weight_deviation": [float(v) for v in self.deviation]}
        return {**attrs, "ternary_weights": 1} if self.ternary else attrs

    def planes(self) -> np.ndarray:
        """Packed ``[OC, KH, KW, CW]`` sign bits, or for ternary weights ``[2, OC, KH, KW, CW]``:
        the sign plane and the nonzero plane (``bitserial.binary_conv2d_dot``)."""
        signs = self.signs.transpose(0, 2, 3, 1)
        return pack_planes(signs) if self.ternary else pack_bits(signs)


def split_scale(weight: np.ndarray, ternary: bool = False) -> BinaryWeights | str:
    """The weights as ``BinaryWeights`` (``weight``: ``[OC, ...]``), or why they are not binary.
    ``ternary``: exact zeros are allowed (``{-alpha, 0, +alpha}`` per output channel)."""
    if is_bipolar(weight):
        return BinaryWeights(weight, None, None)
    magnitude = np.abs(weight.reshape(weight.shape[0], -1))
    zero = magnitude == 0
    if np.any(zero) and not ternary:
        return "weights with exact zeros (ternary), not ±alpha per output channel"
    if ternary and np.all(np.isin(weight, (-1.0, 0.0, 1.0))):
        return BinaryWeights(np.sign(weight), None, None)
    # the median of each channel's nonzero magnitudes (1 for a channel of zeros)
    alpha = np.array([np.median(row[~z]) if np.any(~z) else 1.0 for row, z in zip(magnitude, zero)], np.float32)
    spread = np.where(zero, 0.0, np.abs(magnitude.astype(np.float64) - alpha[:, None]))
    if not np.all(spread <= SCALE_SPREAD * alpha[:, None]):
        kind = "ternary (±alpha or 0" if ternary else "binary (±alpha"
        return f"weights are not {kind} per output channel)"
    deviation = spread.sum(axis=1)
    if not np.any(deviation):
        return BinaryWeights(np.sign(weight), alpha, None)
    # rounded up: a bound, never smaller than the exact sum
    return BinaryWeights(np.sign(weight), alpha, np.nextafter(deviation, np.inf))


@dataclass(frozen=True)
class AsymmetricWeights:
    """TTQ's ternary weights ``{-a, 0, +b}`` (Trained Ternary Quantization: per layer learned
    ``Wp``, ``Wn``; here per output channel, which covers per layer): ``W = b * [W > 0] - a *
    [W < 0]`` exactly, so

        conv(x, W) = b * P - a * N

    with ``P``, ``N`` the exact integer sums of ``x`` over each channel's positive and negative
    taps. ``halves`` are those two masks as ``2 * OC`` output channels of a ternary-weight
    kernel (``{0, +1}`` weights: ``P = nonzeros - 2 * popcount((x XOR 1) AND m)``), scaled by
    ``b`` and ``a``. A channel without positive (negative) taps has ``b`` (``a``) 0."""

    positive: np.ndarray  # [OC, ...] 1 where W = +b[o], else 0
    negative: np.ndarray  # [OC, ...] 1 where W = -a[o], else 0
    plus: np.ndarray  # b, float32 [OC]
    minus: np.ndarray  # a, float32 [OC]

    def halves(self) -> BinaryWeights:
        """``[W > 0]`` and ``[W < 0]`` as ``{0, +1}`` weights of ``2 * OC`` channels, scaled by
        ``b`` and ``a`` (the kernel's values ``b * P`` and ``a * N``, one rounding each),
        interleaved in blocks of output channels (``halves_order``)."""
        order = halves_order(len(self.plus))
        signs = np.concatenate([self.positive, self.negative]).astype(np.float32)[order]
        return BinaryWeights(signs, np.concatenate([self.plus, self.minus]).astype(np.float32)[order], None)


def halves_order(channels: int) -> np.ndarray:
    """For each of a TTQ kernel's ``2 * channels`` halves, its index in ``[P channels, N
    channels]``: blocks of ``bitserial.halves_block`` positive channels, each followed by the
    same channels' negative ones (``bitserial.positive_half``)."""
    block = bitserial.halves_block(channels)
    o = np.arange(channels).reshape(-1, 1, block)
    return np.concatenate([o, o + channels], axis=1).reshape(-1)


def split_halves(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``values`` of a TTQ kernel's halves (``[2 * C, ...]``, ``halves_order``) as
    ``(positive, negative)``, each ``[C, ...]`` in output channel order."""
    channels = len(values) // 2
    restored = np.empty_like(values)
    restored[halves_order(channels)] = values
    return restored[:channels], restored[channels:]


def split_asymmetric(weight: np.ndarray) -> AsymmetricWeights | str:
    """The weights (``[OC, ...]``) as TTQ's ``{-a[o], 0, +b[o]}``, or why they are not: every
    weight of a channel is exactly 0, its one positive value ``b`` or the negative of its one
    magnitude ``a`` (checked exactly, as folded in float32: no tolerance)."""
    flat = weight.reshape(weight.shape[0], -1)
    if not np.all(np.isfinite(flat)):
        return "weights are not finite"
    plus, minus = np.zeros(len(flat), np.float32), np.zeros(len(flat), np.float32)
    for o, row in enumerate(flat):
        for values, side, name in ((row[row > 0], plus, "positive"), (-row[row < 0], minus, "negative")):
            distinct = np.unique(values)
            if distinct.size > 1:
                return (f"output channel {o} has {distinct.size} distinct {name} weights "
                        f"(not TTQ's {{-a, 0, +b}} per output channel)")
            side[o] = distinct[0] if distinct.size else 0.0
    return AsymmetricWeights((flat > 0).reshape(weight.shape), (flat < 0).reshape(weight.shape), plus, minus)


def is_bipolar(values: np.ndarray | None) -> bool:
    return values is not None and values.size > 0 and bool(np.all(np.abs(values) == 1))
