"""``LowerScaledStraightThrough``: XNOR-Net's ``(beta * Sign(x) - p) + p`` with a run-time
per-sample ``beta`` becomes ``beta * Sign(x)`` (within ``u (2|beta| + 1)`` of the float graph)
where ``|p| <= 1`` is proven, and stays float, with the reason, where it is not; BiBench's
``XNORConv2d`` (``bibench/models/layers/xnor.py``) in its CIFAR ResNet then runs every binary conv
as a binary kernel and verifies."""

from __future__ import annotations

import numpy as np
import pytest
from published_bnn import BiBenchXnorConv
from tvm import relax

from conftest import check_bibench_resnet, relax_ops, run_pass, run_relax

from bnn_tvm.relay_passes.lower_scaled_straight_through import SCALED_STRAIGHT_THROUGH, lower_scaled_straight_through

SHAPE = [2, 4, 5, 5]
U = 2.0 ** -24


def mean_abs(x):  # XNOR-Net's beta: one value per sample
    return relax.op.mean(relax.op.abs(x), axis=[1, 2, 3], keepdims=True)


def per_channel_mean(x):  # one value per sample and channel: LiftActivationScale cannot move it
    return relax.op.mean(relax.op.abs(x), axis=[2, 3], keepdims=True)


def hardtanh(x):
    return relax.op.clip(x, -1.0, 1.0)


def unbounded(x):  # p = 2 * clip(x, -1, 1): |p| up to 2
    return relax.op.multiply(relax.op.clip(x, -1.0, 1.0), relax.const(np.float32(2.0)))


def scaled_estimator(p_of=hardtanh, beta_of=mean_abs, commuted=False):
    """``main(x) = (beta(x) * Sign(x) - p(x)) + p(x)`` (``p + (...)`` with ``commuted``)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            scaled = bb.emit(relax.op.multiply(bb.emit(beta_of(x)), bb.emit(relax.op.sign(x))))
            p = bb.emit(p_of(x))
            difference = bb.emit(relax.op.subtract(scaled, p))
            out = bb.emit_output(relax.op.add(p, difference) if commuted else relax.op.add(difference, p))
        bb.emit_func_output(out)
    return bb.get()


def inputs(scale: float, seed: int = 0) -> np.ndarray:
    """Values on both sides of the clip at 1, exact zeros (``Sign(0) = 0``) and ties ``x = ±1``."""
    x = (np.random.default_rng(seed).standard_normal(SHAPE) * scale).astype(np.float32)
    x.flat[::7], x.flat[1::11], x.flat[2::13] = 0.0, 1.0, -1.0
    return x


@pytest.mark.parametrize("commuted", [False, True], ids=["m_minus_p_plus_p", "p_plus_m_minus_p"])
def test_fires_the_estimator_becomes_beta_times_sign_within_the_bound(commuted):
    before = scaled_estimator(commuted=commuted)
    after, log = run_pass(lower_scaled_straight_through, before)
    assert [r.kernel for r in log.rewrites] == [SCALED_STRAIGHT_THROUGH]
    assert "subtract" not in " ".join(relax_ops(after)) and "relax.clip" not in relax_ops(after)
    for scale in (0.01, 0.5, 3.0):  # beta below, around and above |p|'s bound
        x = inputs(scale)
        graph, lowered = run_relax(before, x), run_relax(after, x)
        beta = np.max(np.abs(lowered), axis=(1, 2, 3), keepdims=True)  # TVM's mean, summed in its order
        np.testing.assert_allclose(beta, np.mean(np.abs(x), axis=(1, 2, 3), keepdims=True), rtol=1e-6)
        np.testing.assert_array_equal(lowered, beta * np.sign(x))
        bound = U * (2 * np.abs(lowered) + 1) * (1 + U)
        assert np.all(np.abs(graph.astype(np.float64) - lowered) <= bound)
        assert np.any(graph != lowered) or scale == 3.0  # the float graph does round away from beta * sign(x)


@pytest.mark.parametrize("p_of,beta_of,reason", [
    (unbounded, mean_abs, "|p| > 1 at x ="),
    (hardtanh, per_channel_mean, "beta is not one run-time value per sample"),
], ids=["p_unbounded", "beta_per_channel"])
def test_refuses_with_the_reason(p_of, beta_of, reason):
    after, log = run_pass(lower_scaled_straight_through, scaled_estimator(p_of, beta_of))
    assert not log.rewrites
    (why,) = set(log.kept_float.values())
    assert reason in why
    assert "relax.subtract" in relax_ops(after)


def test_leaves_the_unscaled_estimator_to_lower_straight_through():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            p = bb.emit(hardtanh(x))
            out = bb.emit_output(relax.op.add(bb.emit(relax.op.subtract(bb.emit(relax.op.sign(x)), p)), p))
        bb.emit_func_output(out)
    _, log = run_pass(lower_scaled_straight_through, bb.get())
    assert not log.rewrites and not log.kept_float


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_bibench_xnor_resnet_runs_its_convs_binary_and_verifies(tmp_path, dynamo):
    """Before this pass every binary conv of BiBench's XNOR ResNet stayed float ("no binarized
    operand"): the scaled estimator hid the Sign from the activation-scale lift."""
    check_bibench_resnet(BiBenchXnorConv, tmp_path / "xnor.onnx", dynamo)
