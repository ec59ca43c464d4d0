"""Constant weights as binary (or ternary) signs times a per-output-channel scale."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..common import pack_bits, pack_planes


SCALE_SPREAD = 2.0**-16  # relative spread of |w| in a channel that folding a scale in float32 leaves: a few ulp


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




def is_bipolar(values: np.ndarray | None) -> bool:
    return values is not None and values.size > 0 and bool(np.all(np.abs(values) == 1))
