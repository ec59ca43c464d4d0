"""``FoldZeroScaledTerm``: ``x + c * e`` with a constant ``c`` of zeros becomes ``x`` (FDA's
noise term once its ``alpha`` has decayed to 0); a nonzero ``c``, or a sum that broadcasts ``x``,
is left alone; BiBench's ``FDAConv2d`` (``bibench/models/layers/fda.py``) in its CIFAR ResNet then
runs every binary conv as a binary kernel and verifies."""

from __future__ import annotations

import numpy as np
import pytest
from published_bnn import BiBenchFdaConv
from tvm import relax

from conftest import check_bibench_resnet, relax_ops, run_pass, run_relax

from bnn_tvm.relay_passes.fold_zero_scaled_term import ZERO_TERM, fold_zero_scaled_term

SHAPE = [2, 4, 3, 3]


def sign_plus_scaled_noise(c: np.ndarray, x_shape=SHAPE, commuted=False):
    """``main(x) = Sign(x) + c * x^2`` (``x^2``: the noise, infinite for ``|x| >= 2^64``), the
    sum of ``x_shape`` (``Sign`` of the first ``x_shape`` rows, broadcast)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            sign = bb.emit(relax.op.sign(relax.op.strided_slice(x, [0], [0], [x_shape[0]])))
            noise = bb.emit(relax.op.multiply(x, x))
            term = bb.emit(relax.op.multiply(relax.const(c), noise) if commuted else relax.op.multiply(noise, relax.const(c)))
            out = bb.emit_output(relax.op.add(term, sign) if commuted else relax.op.add(sign, term))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("commuted", [False, True], ids=["x_plus_term", "term_plus_x"])
@pytest.mark.parametrize("c", [np.float32(0.0), np.float32(-0.0), np.zeros([1, 4, 1, 1], np.float32)],
                         ids=["zero", "negative_zero", "zero_per_channel"])
def test_fires_the_zero_term_goes(c, commuted):
    before = sign_plus_scaled_noise(np.asarray(c), commuted=commuted)
    after, log = run_pass(fold_zero_scaled_term, before)
    assert [r.kernel for r in log.rewrites] == [ZERO_TERM]
    assert relax_ops(after) == ["relax.strided_slice", "relax.sign"]
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(SHAPE) * 1e18).astype(np.float32)  # large, finite: the square still finite
    x.flat[::3] = 0.0
    np.testing.assert_array_equal(run_relax(after, x), run_relax(before, x))
    x.flat[1] = np.float32(3e38)  # squared: inf, and 0 * inf is the float graph's own NaN (in numpy, ONNX
    with np.errstate(all="ignore"):  # Runtime; TVM's own lowering simplifies 0 * e to 0 itself)
        assert np.isnan(np.sign(x) + np.asarray(c) * (x * x)).flat[1]
    assert run_relax(after, x).flat[1] == 1.0


@pytest.mark.parametrize("c,x_shape", [
    (np.array([0.0, 1e-30, 0.0, 0.0], np.float32).reshape(1, 4, 1, 1), SHAPE),  # one channel's scale is not 0
    (np.float32(0.0), [1, 4, 3, 3]),  # x broadcast by the sum: dropping the term would change the shape
], ids=["nonzero_element", "broadcast_x"])
def test_leaves_a_term_that_is_not_zero_or_a_broadcast(c, x_shape):
    _, log = run_pass(fold_zero_scaled_term, sign_plus_scaled_noise(np.asarray(c), x_shape))
    assert not log.rewrites


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_bibench_fda_resnet_runs_its_convs_binary_and_verifies(tmp_path, dynamo):
    """Before this pass every binary conv of BiBench's FDA ResNet stayed float: ``sign(a) + 0 *
    noise(a)`` hid the binary tensor."""
    check_bibench_resnet(BiBenchFdaConv, tmp_path / "fda.onnx", dynamo)
