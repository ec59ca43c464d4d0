"""``LowerStraightThrough`` on small Relax modules: ``(Sign(x) - p) + p`` becomes ``Sign(x)``
where ``|p| <= 1`` with the sign of ``x`` is proven over every float32 ``x``, and stays float,
with the reason, where it is not."""

from __future__ import annotations

import numpy as np
import pytest
from tvm import relax

from conftest import relax_ops, run_pass, run_relax

from bnn_tvm.relay_passes.lower_straight_through import STRAIGHT_THROUGH, lower_straight_through

SHAPE = [2, 3, 4]


def estimator(p_of, commuted: bool = False):
    """``main(x) = (Sign(x) - p(x)) + p(x)`` (``p + (Sign(x) - p)`` with ``commuted``)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            sign = bb.emit(relax.op.sign(x))
            p = bb.emit(p_of(x))
            difference = bb.emit(relax.op.subtract(sign, p))
            total = relax.op.add(p, difference) if commuted else relax.op.add(difference, p)
            out = bb.emit_output(total)
        bb.emit_func_output(out)
    return bb.get()


def hardtanh(x):
    return relax.op.clip(x, -1.0, 1.0)


def half_hardtanh(x):  # |p| <= 1/2: fits, a tie case of the proof (1 - p in (1/2, 1])
    return relax.op.multiply(relax.op.clip(x, -1.0, 1.0), relax.const(np.float32(0.5)))


def identity_plus(x):  # p = x: |p| > 1 for |x| > 1, where the sum is not Sign(x)
    return relax.op.add(x, relax.const(np.float32(0.0)))


def wrong_sign(x):  # p = -clip(x): the sign of p is not the sign of x
    return relax.op.negative(relax.op.clip(x, -1.0, 1.0))


def estimator_p(p_of):
    """``main(x) = p(x)`` alone."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(p_of(x))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("p_of", [hardtanh, half_hardtanh], ids=["hardtanh", "half_hardtanh"])
@pytest.mark.parametrize("commuted", [False, True], ids=["s_minus_p_plus_p", "p_plus_s_minus_p"])
def test_fires_the_estimator_becomes_its_sign(p_of, commuted):
    before = estimator(p_of, commuted)
    after, log = run_pass(lower_straight_through, before)
    assert log.changed and [r.kernel for r in log.rewrites] == [STRAIGHT_THROUGH]
    assert "exactly sign(x)" in log.rewrites[0].detail
    assert relax_ops(after) == ["relax.sign"]
    # the same values, ties of the proof included: 0, tiny, 1/2, 1, beyond 1, the largest floats
    x = np.array([0.0, -0.0, 1e-30, -1e-30, 0.5, -0.5, 1.0, -1.0, 3.0, -3e38, 3e38, 0.1] * 2, np.float32).reshape(SHAPE)
    np.testing.assert_array_equal(run_relax(after, x), run_relax(before, x))
    np.testing.assert_array_equal(run_relax(after, x), np.sign(x))


@pytest.mark.parametrize("p_of,reason", [
    (identity_plus, "p has the wrong sign or |p| > 1"),
    (wrong_sign, "p has the wrong sign or |p| > 1"),
], ids=["p_unbounded", "p_wrong_sign"])
def test_refuses_an_estimator_it_cannot_prove_with_a_counterexample(p_of, reason):
    before = estimator(p_of)
    after, log = run_pass(lower_straight_through, before)
    assert not log.changed
    (why,) = set(log.kept_float.values())
    assert reason in why
    assert "relax.add" in relax_ops(after) and "relax.subtract" in relax_ops(after)
    # the value named breaks the proof's condition there (the sum may still happen to be Sign(x))
    x = np.full(SHAPE, np.float32(float(why.split("at x = ")[1].split(",")[0])))
    p = run_relax(estimator_p(p_of), x)
    assert np.all((np.abs(p) > 1) | (np.sign(p) * np.sign(x) < 0)), (x.flat[0], p.flat[0])


def test_leaves_a_sum_that_is_no_estimator():
    """``(Sign(x) - p) + q`` with another ``q``: not the pattern, no log entry."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            difference = bb.emit(relax.op.subtract(bb.emit(relax.op.sign(x)), bb.emit(hardtanh(x))))
            out = bb.emit_output(relax.op.add(difference, bb.emit(half_hardtanh(x))))
        bb.emit_func_output(out)
    _, log = run_pass(lower_straight_through, bb.get())
    assert not log.changed and not log.kept_float
