"""``LowerBinarizers`` on small Relax modules: each binarizer form becomes ``unpack(pack(x))``
(``x >= 0`` forms packed by ``>=``, the strict ones by ``>``), computing the same tensor with ties
at 0 on the right side, and the pass leaves alone what is no binarizer (``Sign``, other constants)
or a binarizer on a tensor it cannot pack, saying why."""

from __future__ import annotations

import numpy as np
import pytest
from tvm import relax

from conftest import bnn_kernels, run_pass, run_relax

from bnn_tvm.relay_passes.lower_binarizers import lower_binarizers

SHAPE = [2, 3, 4, 4]
ONE, MINUS_ONE, ZERO = (relax.const(np.float32(v)) for v in (1.0, -1.0, 0.0))


def where_ge(x):
    return relax.op.where(relax.op.greater_equal(x, ZERO), ONE, MINUS_ONE)


def where_lt(x):
    return relax.op.where(relax.op.less(x, ZERO), MINUS_ONE, ONE)


def cast_ge(x):
    bits = relax.op.astype(relax.op.greater_equal(x, ZERO), "float32")
    return relax.op.subtract(relax.op.multiply(bits, relax.const(np.float32(2.0))), ONE)


def where_gt(x):  # strict: 0 -> -1
    return relax.op.where(relax.op.greater(x, ZERO), ONE, MINUS_ONE)


def sign(x):  # ONNX Sign: 0 at 0, not a binarizer (LowerSign's business)
    return relax.op.sign(x)


def where_other_values(x):
    return relax.op.where(relax.op.greater_equal(x, ZERO), ONE, ZERO)


def module(form, shape=SHAPE, dtype="float32"):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(form(x))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("form,strict", [(where_ge, False), (where_lt, False), (cast_ge, False), (where_gt, True)],
                         ids=["where_ge", "where_lt", "cast_ge", "where_gt"])
def test_fires_and_computes_the_same_with_ties(form, strict):
    before = module(form)
    after, log = run_pass(lower_binarizers, before)
    assert log.changed and [r.kernel for r in log.rewrites] == ["pack_sign"]
    assert ("x > 0" in log.rewrites[0].detail) == strict
    assert bnn_kernels(after) == ["pack_sign", "unpack_sign"]
    x = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)
    x[0, 0, 0, :] = 0.0
    x[1, 2, 3, :2] = -0.0
    got = run_relax(after, x)
    np.testing.assert_array_equal(got, run_relax(before, x))
    np.testing.assert_array_equal(got, np.where(x > 0 if strict else x >= 0, 1, -1))


@pytest.mark.parametrize("form", [sign, where_other_values], ids=["sign", "where_1_0"])
def test_leaves_what_is_no_binarizer(form):
    _, log = run_pass(lower_binarizers, module(form))
    assert not log.changed and not log.kept_float


def test_refuses_a_tensor_it_cannot_pack_and_says_why():
    _, log = run_pass(lower_binarizers, module(where_ge, shape=[2, 3, 4, 4, 2]))
    assert not log.changed
    assert any("5-d float32 tensor" in why for why in log.kept_float.values())
