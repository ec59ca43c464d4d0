"""``FoldFloatTables`` on small Relax modules: the per-channel float ops after a binary conv
that end in a float output become a lookup table over every integer the conv can produce,
computed at compile time in float32: the output is bit-identical (CUDA's way, and k-bit
chains' on CPUs)."""

from __future__ import annotations

import numpy as np
from tvm import relax

from conftest import bnn_kernels, emit_binarizer, run_relax

from bnn_tvm.relay_passes.fold_float_tables import fold_float_tables
from bnn_tvm.relay_passes.fuse_binary_conv2d import fuse_binary_conv2d
from bnn_tvm.relay_passes.lower_binarizers import lower_binarizers

RNG = np.random.default_rng(37)
SHAPE = [1, 16, 6, 6]
CHANNEL = [1, 16, 1, 1]
WEIGHT = np.where(RNG.standard_normal((16, 16, 3, 3)) >= 0, 1, -1).astype(np.float32)


def binary_conv_then_batch_norm():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    scale = relax.const(RNG.uniform(0.1, 3, 16).astype(np.float32).reshape(CHANNEL))
    shift = relax.const(RNG.standard_normal(16).astype(np.float32).reshape(CHANNEL))
    with bb.function("main", [x]):
        with bb.dataflow():
            bits = emit_binarizer(bb, x)
            conv = bb.emit(relax.op.nn.conv2d(bits, relax.const(WEIGHT), padding=[1, 1, 1, 1]))
            out = bb.emit_output(relax.op.add(relax.op.multiply(conv, scale), shift))
        bb.emit_func_output(out)
    mod = lower_binarizers([])(bb.get())
    return relax.transform.DeadCodeElimination()(fuse_binary_conv2d([])(mod))


def test_fires_a_table_over_every_reachable_integer_bit_identical():
    before = binary_conv_then_batch_norm()
    logs = []
    after = relax.transform.DeadCodeElimination()(fold_float_tables(logs)(before))
    (log,) = logs
    assert log.changed and [r.kernel for r in log.rewrites] == ["binary_conv2d_table"]
    assert "lookup table" in log.rewrites[0].detail
    assert "binary_conv2d_table" in bnn_kernels(after) and "binary_conv2d" not in bnn_kernels(after)
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)
        np.testing.assert_array_equal(run_relax(after, x), run_relax(before, x))
