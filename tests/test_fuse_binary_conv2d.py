"""``FuseBinaryConv2d`` on small Relax modules (binarizers already lowered to ``unpack(pack(x))``
by ``LowerBinarizers``): a conv of packed bits with ±1 or ±alpha weights becomes one
XNOR-popcount kernel computing the float conv exactly, zero padding included, and the pass says
why a conv on bits stays float (weights that are no binary tensor, a depthwise conv)."""

from __future__ import annotations

import numpy as np
import pytest
from tvm import relax

from conftest import bnn_kernels, emit_binarizer, relax_ops, run_pass, run_relax

from bnn_tvm.relay_passes.fuse_binary_conv2d import fuse_binary_conv2d
from bnn_tvm.relay_passes.lower_binarizers import lower_binarizers

SHAPE = [1, 8, 6, 6]
RNG = np.random.default_rng(5)


def binarized_conv(weight: np.ndarray, padding=(1, 1, 1, 1), strides=(1, 1), groups=1):
    """``LowerBinarizers`` applied to ``conv2d(where(x >= 0, 1, -1), W)``."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            bits = emit_binarizer(bb, x)
            out = bb.emit_output(relax.op.nn.conv2d(bits, relax.const(weight), strides=strides, padding=padding,
                                                    groups=groups))
        bb.emit_func_output(out)
    return relax.transform.DeadCodeElimination()(lower_binarizers([])(bb.get()))


def signs(shape) -> np.ndarray:
    return np.where(RNG.standard_normal(shape) >= 0, 1, -1).astype(np.float32)


def inputs() -> np.ndarray:
    x = RNG.standard_normal(SHAPE).astype(np.float32)
    x[0, :, 0, :3] = 0.0  # binarized to +1, as the float graph does
    return x


@pytest.mark.parametrize("weight,padding,strides", [
    (signs((16, 8, 3, 3)), (1, 1, 1, 1), (1, 1)),  # zero padding: the border table corrects it
    (signs((16, 8, 3, 3)), (0, 2, 1, 0), (2, 1)),  # asymmetric, strided
    (signs((16, 8, 3, 3)) * np.float32(0.25), (1, 1, 1, 1), (1, 1)),  # ±alpha, a power of two
], ids=["padded", "asymmetric_strided", "power_of_two_scale"])
def test_fires_one_kernel_computing_the_float_conv(weight, padding, strides):
    before = binarized_conv(weight, padding, strides)
    after, log = run_pass(fuse_binary_conv2d, before)
    assert log.changed and [r.kernel for r in log.rewrites] == ["binary_conv2d"]
    assert "relax.nn.conv2d" not in relax_ops(after)
    assert "binary_conv2d" in bnn_kernels(after)
    x = inputs()
    np.testing.assert_array_equal(run_relax(after, x), run_relax(before, x))


@pytest.mark.parametrize("weight,groups,reason", [
    (RNG.standard_normal((16, 8, 3, 3)).astype(np.float32), 1, "weights"),  # real-valued weights
    (signs((8, 1, 3, 3)), 8, "grouped conv"),  # depthwise: a float conv is faster
], ids=["real_weights", "depthwise"])
def test_keeps_a_conv_float_naming_the_reason(weight, groups, reason):
    before = binarized_conv(weight, groups=groups)
    after, log = run_pass(fuse_binary_conv2d, before)
    assert not log.changed
    assert any(reason in why for why in log.kept_float.values()), log.kept_float
    assert "relax.nn.conv2d" in relax_ops(after)


def ttq_weights(shape, b, a) -> np.ndarray:
    """TTQ's ``{-a, 0, +b}``: about a third 0, the rest ``+b`` or ``-a``."""
    values = signs(shape)
    values[RNG.random(shape) < 0.35] = 0
    return (np.float32(b) * (values > 0) - np.float32(a) * (values < 0)).astype(np.float32)


@pytest.mark.parametrize("b,a", [(0.625, 1.375), (0.61, 1.37)], ids=["common_grid", "trained_scales"])
def test_ttq_weights_fire_one_kernel_over_both_halves(b, a):
    """``b * P - a * N`` from one kernel over 2 * OC ternary-weight channels: bit-identical where
    a and b are multiples of 1/8 (every sum exact on both sides), else within float rounding."""
    before = binarized_conv(ttq_weights((16, 8, 3, 3), b, a))
    after, log = run_pass(fuse_binary_conv2d, before)
    assert [r.kernel for r in log.rewrites] == ["binary_conv2d"], log.rewrites
    assert "TTQ weights {-a, 0, +b} per layer" in log.rewrites[0].detail
    assert "relax.nn.conv2d" not in relax_ops(after)
    x = inputs()
    got, want = run_relax(after, x), run_relax(before, x)
    if b == 0.625:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        assert np.any(got != 0)


def test_ttq_weight_off_its_channel_values_stays_float():
    weight = ttq_weights((16, 8, 3, 3), 0.61, 1.37)
    weight[2][weight[2] < 0] = np.float32(-1.37)
    weight[2, 0, 0, 0] = np.float32(-1.25)  # a second negative value in channel 2
    after, log = run_pass(fuse_binary_conv2d, binarized_conv(weight))
    assert not log.changed
    assert any("output channel 2 has 2 distinct negative weights" in why for why in log.kept_float.values()), \
        log.kept_float
