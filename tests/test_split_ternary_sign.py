"""``SplitTernarySign`` on small Relax modules: a conv or dense on ``Sign(x)`` of a float tensor
(which can be 0) reads the sign and nonzero planes of ``x`` (``pack_ternary``) instead, a grouped
conv two bipolar halves; the result is the same tensor, zeros exact. A ``Sign`` of a layer that
becomes a binary kernel this round waits (``LowerSign`` may prove it never 0)."""

from __future__ import annotations

import numpy as np
import pytest
from tvm import relax

from conftest import bnn_kernels, emit_binarizer, relax_ops, run_pass, run_relax

from bnn_tvm.relay_passes.lower_binarizers import lower_binarizers
from bnn_tvm.relay_passes.split_ternary_sign import split_ternary_sign

RNG = np.random.default_rng(7)


def signs(shape) -> np.ndarray:
    return np.where(RNG.standard_normal(shape) >= 0, 1, -1).astype(np.float32)


def sign_conv(groups=1):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 32, 5, 5], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            sign = bb.emit(relax.op.sign(x))
            weight = relax.const(signs((32, 32 // groups, 3, 3)))
            out = bb.emit_output(relax.op.nn.conv2d(sign, weight, padding=[1, 1, 1, 1], groups=groups))
        bb.emit_func_output(out)
    return bb.get()


def sign_dense():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([3, 40], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(bb.emit(relax.op.sign(x)), relax.const(signs((40, 16)))))
        bb.emit_func_output(out)
    return bb.get()


def sign_after_a_binary_conv():
    """``conv(Sign(conv(b(x))))`` with ``b`` a lowered binarizer: the Sign's input is a conv the
    fusions of this round make a kernel, so this Sign waits for ``LowerSign``."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 32, 5, 5], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            bits = emit_binarizer(bb, x)
            first = bb.emit(relax.op.nn.conv2d(bits, relax.const(signs((32, 32, 3, 3))), padding=[1, 1, 1, 1]))
            out = bb.emit_output(relax.op.nn.conv2d(bb.emit(relax.op.sign(first)), relax.const(signs((32, 32, 3, 3))),
                                                    padding=[1, 1, 1, 1]))
        bb.emit_func_output(out)
    return relax.transform.DeadCodeElimination()(lower_binarizers([])(bb.get()))


def with_zeros(shape) -> np.ndarray:
    x = RNG.standard_normal(shape).astype(np.float32)
    x.reshape(-1)[::5] = 0.0  # Sign(0) = 0: a fifth of the values
    return x


@pytest.mark.parametrize("make,shape,kernel", [
    (sign_conv, [1, 32, 5, 5], "pack_ternary"),
    (sign_dense, [3, 40], "pack_ternary"),
    (lambda: sign_conv(groups=2), [1, 32, 5, 5], "pack_sign_pair"),
], ids=["conv", "dense", "grouped_conv_halves"])
def test_fires_the_sign_becomes_planes_with_its_zeros_exact(make, shape, kernel):
    before = make()
    after, log = run_pass(split_ternary_sign, before)
    assert log.changed and [r.kernel for r in log.rewrites] == [kernel]
    assert "relax.sign" not in relax_ops(after)
    assert kernel in bnn_kernels(after)
    x = with_zeros(shape)
    np.testing.assert_array_equal(run_relax(after, x), run_relax(before, x))


def test_a_sign_after_a_layer_that_becomes_binary_waits_then_splits():
    before = sign_after_a_binary_conv()
    _, log = run_pass(split_ternary_sign, before, wait=True)
    assert not log.changed
    after, log = run_pass(split_ternary_sign, before, wait=False)
    assert log.changed and [r.kernel for r in log.rewrites] == ["pack_ternary"]
    x = with_zeros([1, 32, 5, 5])
    np.testing.assert_array_equal(run_relax(after, x), run_relax(before, x))
