"""``HandWrittenFloatOps`` on small Relax modules: a max pool, a matmul with a constant weight and
a LayerNorm become calls of the hand-written CPU kernels (clamped windows; the weight blocked at
compile time; rows' sums as vectors), computing bit-identical values; with
``BNN_FLOAT_SCHEDULES=0`` the module is unchanged. (The erf chains: ``test_float_elementwise.py``.)"""

from __future__ import annotations

import numpy as np
import pytest
from tvm import relax

from conftest import relax_ops, run_relax

from bnn_tvm.relay_passes.hand_written_float_ops import hand_written_float_ops

RNG = np.random.default_rng(41)
SHAPE = [2, 8, 7, 7]


def pool_then_classifier():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    weight = relax.const(RNG.standard_normal((8 * 4 * 4, 16)).astype(np.float32))  # outputs in vectors of 8
    with bb.function("main", [x]):
        with bb.dataflow():
            pooled = bb.emit(relax.op.nn.max_pool2d(x, (3, 3), (2, 2), (1, 1, 1, 1)))
            flat = bb.emit(relax.op.reshape(pooled, [2, 8 * 4 * 4]))
            out = bb.emit_output(relax.op.matmul(flat, weight))
        bb.emit_func_output(out)
    return bb.get()


def test_fires_both_ops_become_hand_written_kernels_bit_identical():
    before = pool_then_classifier()
    plans = {}
    after = relax.transform.DeadCodeElimination()(hand_written_float_ops(lanes32=8, plans=plans)(before))
    ops = relax_ops(after)
    assert "relax.nn.max_pool2d" not in ops and "relax.matmul" not in ops
    assert len(plans) == 2, plans  # one plan per kernel
    x = RNG.standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_array_equal(run_relax(after, x), run_relax(before, x))


def test_off_with_the_float_schedules(monkeypatch):
    monkeypatch.setenv("BNN_FLOAT_SCHEDULES", "0")
    before = pool_then_classifier()
    after = hand_written_float_ops(lanes32=8)(before)
    assert relax_ops(after) == relax_ops(before)


def layer_norm_module(shape):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    gamma = relax.const(RNG.uniform(0.5, 1.5, shape[-1]).astype(np.float32))
    beta = relax.const(RNG.standard_normal(shape[-1]).astype(np.float32))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.layer_norm(x, gamma, beta, axes=[-1], epsilon=1e-5))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("lanes", [16, 8])
def test_layer_norm_rows_as_vectors_bit_identical(lanes):
    """``schedules.layer_norm`` against TVM's default lowering (``run_relax``), 8 and 16 rows a vector."""
    before = layer_norm_module([2, 16, 48])
    plans = {}
    after = hand_written_float_ops(lanes32=lanes, plans=plans)(before)
    assert "relax.nn.layer_norm" not in relax_ops(after) and any("rows' sums" in p for p in plans.values()), plans
    for scale, offset in ((1.0, 0.0), (1e4, 0.0), (1e-3, 0.0), (1.0, 50.0)):
        x = (RNG.standard_normal([2, 16, 48]) * scale + offset).astype(np.float32)
        assert np.array_equal(run_relax(after, x).view(np.int32), run_relax(before, x).view(np.int32))


@pytest.mark.parametrize("shape,lanes", [([2, 5, 48], 16), ([2, 16, 48], 4)])
def test_layer_norm_left_to_the_float_schedules(shape, lanes):
    """Rows not in whole vectors, or a 4-lane unit (NEON): ``float_ops``' interleaved rows."""
    before = layer_norm_module(shape)
    assert "relax.nn.layer_norm" in relax_ops(hand_written_float_ops(lanes32=lanes)(before))


def test_leaves_an_empty_weight_to_tvm():
    """BiBench's FDA layers (``bibench/models/layers/fda.py``, ``NoiseAdaption_a``) build
    ``nn.Linear(d, d // 64)``: 0 outputs for fewer than 64 channels, then ``nn.Linear(0, d)``.
    Blocking an empty weight crashed the schedule (a division by zero in a loop split); the
    matmuls stay TVM's and compute the empty result and the zeros."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([2, 9, 16], "float32"))
    fc1 = relax.const(np.zeros((16, 0), np.float32))
    fc2 = relax.const(np.zeros((0, 16), np.float32))
    with bb.function("main", [x]):
        with bb.dataflow():
            hidden = bb.emit(relax.op.nn.relu(bb.emit(relax.op.matmul(x, fc1))))
            out = bb.emit_output(relax.op.add(bb.emit(relax.op.matmul(hidden, fc2)), x))
        bb.emit_func_output(out)
    before = bb.get()
    after = hand_written_float_ops(lanes32=8)(before)
    assert relax_ops(after).count("relax.matmul") == 2
    x = RNG.standard_normal((2, 9, 16)).astype(np.float32)
    np.testing.assert_array_equal(run_relax(after, x), x)
