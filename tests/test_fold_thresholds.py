"""``FoldThresholds`` on small Relax modules: ``pack(chain(binary_conv2d(...)))`` with a per-channel
monotone float chain (batch norm, negative scales included) becomes one kernel comparing the
integer result with a per-channel interval, deciding every value as the float graph does, ties
included; a chain that is not monotone per channel stays float with the reason."""

from __future__ import annotations

import numpy as np
import pytest
from tvm import relax

from conftest import bnn_kernels, emit_binarizer, run_pass, run_relax

from bnn_tvm.relay_passes.fold_thresholds import fold_thresholds
from bnn_tvm.relay_passes.fuse_binary_conv2d import fuse_binary_conv2d
from bnn_tvm.relay_passes.lower_binarizers import lower_binarizers

RNG = np.random.default_rng(13)
SHAPE = [1, 16, 6, 6]
WEIGHT = np.where(RNG.standard_normal((16, 16, 3, 3)) >= 0, 1, -1).astype(np.float32)
CHANNEL = [1, 16, 1, 1]


def binary_layer_then_binarizer(chain):
    """``b(chain(conv(b(x), W)))`` with ``b`` the binarizer ``where(t >= 0, 1, -1)``, binarizers
    lowered and the conv fused (the state ``FoldThresholds`` sees in the pipeline)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))

    def binarize(t):
        return emit_binarizer(bb, t)

    with bb.function("main", [x]):
        with bb.dataflow():
            conv = bb.emit(relax.op.nn.conv2d(binarize(x), relax.const(WEIGHT), padding=[1, 1, 1, 1]))
            out = bb.emit_output(binarize(chain(bb, conv)))
        bb.emit_func_output(out)
    mod = lower_binarizers([])(bb.get())
    return relax.transform.DeadCodeElimination()(fuse_binary_conv2d([])(mod))


def batch_norm_with_ties(bb, d):
    """``d * s + t`` per channel, half the scales negative, shifts putting reachable ``d`` exactly
    on the threshold (``t = -s * d0`` for an even ``d0``: conv results of 144 taps are even)."""
    s = RNG.uniform(0.5, 2.0, 16).astype(np.float32) * np.where(np.arange(16) % 2, -1, 1).astype(np.float32)
    t = (-s * RNG.integers(-10, 10, 16) * 2).astype(np.float32)
    return bb.emit(relax.op.add(relax.op.multiply(d, relax.const(s.reshape(CHANNEL))), relax.const(t.reshape(CHANNEL))))


def negative_slope_prelu(bb, d):
    """``prelu(d, -0.5) - 1``: both signs of ``d`` reach ``>= 0`` (``d >= 1`` or ``d <= -2``), the
    values between do not: no single interval of ``d``."""
    slope = relax.const(np.full(16, -0.5, np.float32))
    return bb.emit(relax.op.subtract(relax.op.nn.prelu(d, slope), relax.const(np.float32(1.0))))


def test_fires_decides_as_the_float_graph_ties_included():
    before = binary_layer_then_binarizer(batch_norm_with_ties)
    after, log = run_pass(fold_thresholds, before)
    assert log.changed and [r.kernel for r in log.rewrites] == ["binary_conv2d_threshold"]
    assert "binary_conv2d_threshold" in bnn_kernels(after) and "binary_conv2d" not in bnn_kernels(after)
    for seed in range(4):
        x = np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)
        np.testing.assert_array_equal(run_relax(after, x), run_relax(before, x))


def test_a_chain_that_is_not_monotone_stays_float_with_the_reason():
    before = binary_layer_then_binarizer(negative_slope_prelu)
    after, log = run_pass(fold_thresholds, before)
    assert not log.changed
    assert any("not monotone per channel" in why for why in log.kept_float.values()), log.kept_float
    assert bnn_kernels(after) == bnn_kernels(before)
