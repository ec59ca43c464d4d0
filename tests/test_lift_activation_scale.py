"""``LiftActivationScale`` on small Relax modules: XNOR-Net's ``conv(beta * Sign(x), W)`` with a
run-time per-sample ``beta`` becomes ``beta * conv(Sign(x), W)`` (within float rounding), and the
pass leaves a scale that is a constant or not one value per sample alone."""

from __future__ import annotations

import numpy as np
import pytest
from tvm import relax

from conftest import relax_ops, run_pass, run_relax

from bnn_tvm.relay_passes.lift_activation_scale import SCALE_AFTER, lift_activation_scale

SHAPE = [2, 4, 5, 5]
WEIGHT = np.where(np.random.default_rng(0).standard_normal((6, 4, 3, 3)) >= 0, 1, -1).astype(np.float32)


def xnor_conv(scale_of, scale_first=False):
    """``main(x) = conv2d(scale(x) * Sign(x), W, padding 1)``."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            sign = bb.emit(relax.op.sign(x))
            beta = bb.emit(scale_of(x))
            scaled = bb.emit(relax.op.multiply(beta, sign) if scale_first else relax.op.multiply(sign, beta))
            out = bb.emit_output(relax.op.nn.conv2d(scaled, relax.const(WEIGHT), padding=[1, 1, 1, 1]))
        bb.emit_func_output(out)
    return bb.get()


def mean_abs(x):  # XNOR-Net's beta: one value per sample
    return relax.op.mean(relax.op.abs(x), axis=[1, 2, 3], keepdims=True)


def per_channel_mean(x):  # one value per sample *and channel*: not the same at every tap
    return relax.op.mean(relax.op.abs(x), axis=[2, 3], keepdims=True)


def constant(_x):
    return relax.const(np.full([1, 1, 1, 1], 0.5, np.float32))


@pytest.mark.parametrize("scale_first", [False, True], ids=["sign_times_beta", "beta_times_sign"])
def test_fires_the_scale_follows_the_conv(scale_first):
    before = xnor_conv(mean_abs, scale_first)
    after, log = run_pass(lift_activation_scale, before)
    assert log.changed and [r.kernel for r in log.rewrites] == [SCALE_AFTER]
    ops = relax_ops(after)
    # the conv reads Sign(x) itself; the multiply comes after it
    assert ops.index("relax.nn.conv2d") < max(i for i, op in enumerate(ops) if op == "relax.multiply")
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    x[0, 0, 0, :2] = 0  # Sign(0) = 0 on both sides
    np.testing.assert_allclose(run_relax(after, x), run_relax(before, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale_of", [per_channel_mean, constant], ids=["per_channel", "constant"])
def test_leaves_other_scales_alone(scale_of):
    before = xnor_conv(scale_of)
    after, log = run_pass(lift_activation_scale, before)
    assert not log.changed
    assert relax_ops(after) == relax_ops(relax.transform.DeadCodeElimination()(before))
