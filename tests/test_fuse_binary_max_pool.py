"""``FuseBinaryMaxPool`` on small Relax modules: a max pool of binarized values becomes a bitwise
OR of the packed words (max of ±1 values is +1 where any is), padding and strides as the float
pool's; a dilated pool stays float with the reason."""

from __future__ import annotations

import numpy as np
import pytest
from tvm import relax

from conftest import emit_binarizer, relax_ops, run_pass, run_relax

from bnn_tvm.relay_passes.fuse_binary_max_pool import fuse_binary_max_pool
from bnn_tvm.relay_passes.lower_binarizers import lower_binarizers

SHAPE = [2, 40, 7, 7]


def pooled_bits(pool_size=(2, 2), strides=(2, 2), padding=(0, 0, 0, 0), dilation=(1, 1)):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            bits = emit_binarizer(bb, x)
            out = bb.emit_output(relax.op.nn.max_pool2d(bits, pool_size, strides, padding, dilation))
        bb.emit_func_output(out)
    return relax.transform.DeadCodeElimination()(lower_binarizers([])(bb.get()))


@pytest.mark.parametrize("kwargs", [
    {},
    {"pool_size": (3, 3), "strides": (2, 2), "padding": (1, 1, 1, 1)},  # a ResNet stem's pool, odd size
    {"pool_size": (3, 3), "strides": (1, 1), "padding": (0, 1, 2, 0)},  # asymmetric padding
], ids=["2x2", "3x3_stride2_pad1", "asymmetric_pad"])
def test_fires_an_or_of_words_equal_to_the_float_pool(kwargs):
    before = pooled_bits(**kwargs)
    after, log = run_pass(fuse_binary_max_pool, before)
    assert log.changed
    assert "relax.nn.max_pool2d" not in relax_ops(after)
    x = np.random.default_rng(3).standard_normal(SHAPE).astype(np.float32)
    x[:, :, :2, :2] = -1.0  # a window of all -1: the OR is 0, the max -1
    np.testing.assert_array_equal(run_relax(after, x), run_relax(before, x))


def test_a_dilated_pool_stays_float_with_the_reason():
    before = pooled_bits(pool_size=(2, 2), strides=(1, 1), dilation=(2, 2))
    after, log = run_pass(fuse_binary_max_pool, before)
    assert not log.changed and "dilated or non-NCHW max pool" in log.kept_float.values()
    assert "relax.nn.max_pool2d" in relax_ops(after)
