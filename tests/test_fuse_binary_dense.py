"""``FuseBinaryDense`` on small Relax modules (binarizers lowered by ``LowerBinarizers``): a matmul
of packed features with ±1, ±alpha or ternary weights becomes one popcount kernel equal to the
float matmul, also through a flatten of NCHW bits (the weight rows permuted to the packed
order); weights that are no binary matrix stay float with the reason."""

from __future__ import annotations

import numpy as np
import pytest
from tvm import relax

from conftest import bnn_kernels, emit_binarizer, relax_ops, run_pass, run_relax

from bnn_tvm.relay_passes.fuse_binary_dense import fuse_binary_dense
from bnn_tvm.relay_passes.lower_binarizers import lower_binarizers

RNG = np.random.default_rng(9)


def binarized_matmul(in_shape, weight: np.ndarray):
    """``LowerBinarizers`` applied to ``matmul(flatten(where(x >= 0, 1, -1)), W)``."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(in_shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            bits = emit_binarizer(bb, x)
            if len(in_shape) > 2:
                bits = bb.emit(relax.op.reshape(bits, [in_shape[0], int(np.prod(in_shape[1:]))]))
            out = bb.emit_output(relax.op.matmul(bits, relax.const(weight)))
        bb.emit_func_output(out)
    return relax.transform.DeadCodeElimination()(lower_binarizers([])(bb.get()))


def signs(shape) -> np.ndarray:
    return np.where(RNG.standard_normal(shape) >= 0, 1, -1).astype(np.float32)


@pytest.mark.parametrize("in_shape,weight", [
    ([3, 70], signs((70, 24))),  # features not a multiple of 32
    ([2, 8, 3, 3], signs((72, 10))),  # a flatten of NCHW bits: rows permuted to (H, W, C)
    ([3, 70], signs((70, 24)) * np.float32(0.5)),  # ±alpha
    ([3, 70], signs((70, 24)) * (RNG.random((70, 24)) < 0.7)),  # ternary weights (exact zeros)
], ids=["bipolar", "flattened_nchw", "scaled", "ternary_weights"])
def test_fires_one_kernel_computing_the_float_matmul(in_shape, weight):
    before = binarized_matmul(in_shape, weight.astype(np.float32))
    after, log = run_pass(fuse_binary_dense, before)
    assert log.changed and [r.kernel for r in log.rewrites] == ["binary_dense"]
    assert "relax.matmul" not in relax_ops(after) and "binary_dense" in bnn_kernels(after)
    x = RNG.standard_normal(in_shape).astype(np.float32)
    x.reshape(-1)[::7] = 0.0  # binarized to +1
    np.testing.assert_array_equal(run_relax(after, x), run_relax(before, x))


def test_keeps_real_valued_weights_float_naming_the_reason():
    before = binarized_matmul([3, 70], RNG.standard_normal((70, 24)).astype(np.float32))
    after, log = run_pass(fuse_binary_dense, before)
    assert not log.changed and log.kept_float
    assert "relax.matmul" in relax_ops(after)
