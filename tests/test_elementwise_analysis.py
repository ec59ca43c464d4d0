"""bnn_tvm.relay_passes.analysis.elementwise: bounds that hold, proofs over every float32 input."""

from __future__ import annotations

import numpy as np

from bnn_tvm.relay_passes.analysis.elementwise import Elementwise, for_all_inputs, from_ordinal, to_ordinal
from bnn_tvm.relay_passes.lower_straight_through import condition_on_bounds, condition_on_values


def bireal_estimator():
    """Bi-Real's polynomial ``p`` and ``sign(x)`` as ``published_bnn.BiRealActivation`` computes them."""
    f = Elementwise()
    x = f.add("input")

    def const(v):
        return f.add("const", value=np.float32(v))

    m1, m2, m3 = (f.add("cast_float", f.add("less", x, const(c))) for c in (-1, 0, 1))
    xx, x2 = f.add("multiply", x, x), f.add("multiply", x, const(2))
    out1 = f.add("add", f.add("multiply", m1, const(-1)), f.add("multiply", f.add("add", xx, x2), f.add("subtract", const(1), m1)))
    neg_xx = f.add("multiply", f.add("negative", x), x)
    out2 = f.add("add", f.add("multiply", out1, m2), f.add("multiply", f.add("add", neg_xx, x2), f.add("subtract", const(1), m2)))
    out3 = f.add("add", f.add("multiply", out2, m3), f.add("subtract", const(1), m3))
    return f, f.add("sign", x), out3


def prove(f, s, p):
    return for_all_inputs(f, condition_on_bounds(s, p), condition_on_values(s, p))


def test_ordinals_order_every_float():
    values = np.array([-np.inf, -3.0, -1e-45, -0.0, 0.0, 1e-45, 1.0, np.inf], np.float32)
    ordinals = to_ordinal(values)
    assert np.all(np.diff(ordinals[[0, 1, 2, 3, 5, 6, 7]]) > 0) and ordinals[3] == ordinals[4] == 0
    np.testing.assert_array_equal(from_ordinal(ordinals[[0, 1, 2, 5, 6, 7]]), values[[0, 1, 2, 5, 6, 7]])


def test_bounds_hold_every_sampled_value():
    """Each node's bounds over an interval contain its exact float32 value at inputs in it."""
    f, _, _ = bireal_estimator()
    rng = np.random.default_rng(0)
    ends = np.sort(rng.standard_normal((200, 2)).astype(np.float32) * np.float32(3), axis=1)
    ends[:20] *= np.float32(1e19)  # where x * x overflows
    bounds = f.bound(ends[:, 0], ends[:, 1])
    for i, (lo, hi) in enumerate(ends):
        samples = np.concatenate([[lo, hi], rng.uniform(lo, hi, 50).astype(np.float32)])
        for node, values in zip(bounds, f.evaluate(samples)):
            finite = values[~np.isnan(values)]
            assert np.all((finite >= node.lo[i]) & (finite <= node.hi[i])), (i, lo, hi)
            assert node.nan[i] or not np.any(np.isnan(values))


def test_bireal_estimator_is_proven_with_the_nan_region_found():
    """Proven over all 2^32 inputs; where ``x * x`` overflows (|x| >= 2^64) the float graph is NaN."""
    outcome = prove(*bireal_estimator())
    assert outcome.holds and outcome.nan_from == 2.0**64
    x = np.array([2.0**64, -(2.0**64), np.nextafter(np.float32(2.0**64), np.float32(0))], np.float32)
    f, s, p = bireal_estimator()
    values = f.evaluate(x)
    assert np.isnan(values[p][:2]).all() and not np.isnan(values[p][2])


def test_an_unbounded_estimator_is_refuted_with_a_real_counterexample():
    f = Elementwise()
    x = f.add("input")
    outcome = prove(f, f.add("sign", x), x)  # p = x
    assert not outcome.holds and not outcome.undecided
    r = np.float32(outcome.counterexample)
    s = np.sign(r)
    with np.errstate(invalid="ignore"):
        assert (s - r) + r != s  # float32 arithmetic really differs there


def test_a_clip_past_one_is_refuted():
    f = Elementwise()
    x = f.add("input")
    p = f.add("clip", x, value=(-1.0, 1.5))
    outcome = prove(f, f.add("sign", x), p)
    assert not outcome.holds and 1 < outcome.counterexample
