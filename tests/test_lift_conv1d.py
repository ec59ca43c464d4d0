"""``LiftConv1d`` on small Relax modules: a 1-D conv (NCW) becomes a 2-D conv over a one-row
``[N, C, 1, L]`` view, strides, padding, dilation and groups kept, computing the same values; a
1-D conv in another layout stays as it is, with the reason."""

from __future__ import annotations

import numpy as np
import pytest
from tvm import relax

from conftest import relax_ops, run_pass, run_relax

from bnn_tvm.relay_passes.lift_conv1d import LIFTED, lift_conv1d

RNG = np.random.default_rng(23)


def conv1d(weight_shape, data_layout="NCW", **attrs):
    bb = relax.BlockBuilder()
    shape = [2, 8, 11] if data_layout == "NCW" else [2, 11, 8]
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    weight = relax.const(RNG.standard_normal(weight_shape).astype(np.float32))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.conv1d(x, weight, data_layout=data_layout,
                                                    out_layout=data_layout, **attrs))
        bb.emit_func_output(out)
    return bb.get(), shape


@pytest.mark.parametrize("weight_shape,attrs", [
    ((6, 8, 3), {"padding": [1, 1]}),
    ((6, 8, 5), {"strides": 2, "padding": [2, 1], "dilation": 1}),
    ((6, 8, 3), {"dilation": 2, "padding": [2, 2]}),  # DFSMN's dilated memory
    ((8, 4, 3), {"groups": 2, "padding": [1, 1]}),
], ids=["padded", "strided_asymmetric", "dilated", "grouped"])
def test_fires_a_one_row_conv2d_with_the_same_values(weight_shape, attrs):
    before, shape = conv1d(weight_shape, **attrs)
    after, log = run_pass(lift_conv1d, before)
    assert log.changed and [r.kernel for r in log.rewrites] == [LIFTED]
    ops = relax_ops(after)
    assert "relax.nn.conv2d" in ops and "relax.nn.conv1d" not in ops
    x = RNG.standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(run_relax(after, x), run_relax(before, x))  # the same sums in the same order


def test_another_layout_stays_with_the_reason():
    before, _ = conv1d((6, 8, 3), data_layout="NWC")
    after, log = run_pass(lift_conv1d, before)
    assert not log.changed and any("layouts NWC" in why for why in log.kept_float.values()), log.kept_float
    assert "relax.nn.conv1d" in relax_ops(after)
