"""``FoldFloatEpilogues`` on small Relax modules: the per-channel float ops after a binary conv
that end in a float output (scale, batch norm, PReLU) run in the conv kernel as its epilogue,
each op rounded as the unfused graph rounds it: the output is bit-identical."""

from __future__ import annotations

import numpy as np
import pytest
from tvm import relax

from conftest import bnn_kernels, emit_binarizer, per_channel, run_relax

from bnn_tvm.relay_passes.fold_float_epilogues import fold_float_epilogues
from bnn_tvm.relay_passes.fuse_binary_conv2d import fuse_binary_conv2d
from bnn_tvm.relay_passes.lower_binarizers import lower_binarizers

RNG = np.random.default_rng(17)
SHAPE = [1, 16, 6, 6]
WEIGHT = np.where(RNG.standard_normal((16, 16, 3, 3)) >= 0, 1, -1).astype(np.float32)


def batch_norm(bb, d):  # full-mantissa scales: an FMA would round differently from the graph
    s, t = RNG.uniform(0.1, 3, 16), RNG.standard_normal(16)
    return bb.emit(relax.op.add(relax.op.multiply(d, per_channel(s)), per_channel(t)))


def batch_norm_prelu(bb, d):
    return bb.emit(relax.op.nn.prelu(batch_norm(bb, d), relax.const(RNG.uniform(0.05, 0.3, 16).astype(np.float32))))


def binary_conv_then(chain):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            bits = emit_binarizer(bb, x)
            conv = bb.emit(relax.op.nn.conv2d(bits, relax.const(WEIGHT), padding=[1, 1, 1, 1]))
            out = bb.emit_output(chain(bb, conv))
        bb.emit_func_output(out)
    mod = lower_binarizers([])(bb.get())
    return relax.transform.DeadCodeElimination()(fuse_binary_conv2d([])(mod))


@pytest.mark.parametrize("chain,steps", [(batch_norm, 2), (batch_norm_prelu, 3)], ids=["batch_norm", "batch_norm_prelu"])
def test_fires_the_float_ops_run_in_the_kernel_bit_identically(chain, steps):
    before = binary_conv_then(chain)
    logs = []
    after = relax.transform.DeadCodeElimination()(fold_float_epilogues(logs)(before))
    (log,) = logs
    assert log.changed and [r.kernel for r in log.rewrites] == ["binary_conv2d_epilogue"]
    assert f"{steps} float op(s)" in log.rewrites[0].detail
    assert "binary_conv2d_epilogue" in bnn_kernels(after) and "binary_conv2d" not in bnn_kernels(after)
    x = RNG.standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_array_equal(run_relax(after, x), run_relax(before, x))
