"""``LowerSign`` on small Relax modules: an ONNX ``Sign`` (0 at 0) becomes packed bits only where
no value it can see is 0: after a per-channel float chain of a binary kernel whose reachable
integers all map away from 0. It stays float, saying why, on a float tensor or where a reachable
value maps to 0; with ``sign_zero="plus"`` (``Sign(0) = +1`` by the user's choice) any ``Sign``
is packed."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from conftest import emit_binarizer, run_pass, run_relax

from bnn_tvm.relay_passes.fuse_binary_conv2d import fuse_binary_conv2d
from bnn_tvm.relay_passes.lower_binarizers import lower_binarizers
from bnn_tvm.relay_passes.lower_sign import lower_sign

RNG = np.random.default_rng(11)
SHAPE = [1, 8, 5, 5]
WEIGHT = np.where(RNG.standard_normal((8, 8, 3, 3)) >= 0, 1, -1).astype(np.float32)


def sign_after_binary_conv(shift: float):
    """``Sign(conv(b(x), W) * 0.5 + shift)`` with ``b`` a binarizer, ``W`` ±1, no padding: the
    conv's results are even integers in [-72, 72]."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            bits = emit_binarizer(bb, x)
            conv = bb.emit(relax.op.nn.conv2d(bits, relax.const(WEIGHT)))
            affine = bb.emit(relax.op.add(relax.op.multiply(conv, relax.const(np.float32(0.5))),
                                          relax.const(np.float32(shift))))
            out = bb.emit_output(relax.op.sign(affine))
        bb.emit_func_output(out)
    mod = lower_binarizers([])(bb.get())
    return relax.transform.DeadCodeElimination()(fuse_binary_conv2d([])(mod))


def sign_of_input():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.sign(x))
        bb.emit_func_output(out)
    return bb.get()


def packs(mod) -> int:
    return sum(1 for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None
               and str(f.attrs.get("bnn.op", "")) == "pack_sign")


def test_fires_where_no_reachable_value_is_zero():
    before = sign_after_binary_conv(shift=0.25)  # d / 2 + 1/4: never 0 for an integer d
    after, log = run_pass(lower_sign, before)
    assert log.changed and packs(after) == packs(before) + 1
    x = RNG.standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_array_equal(run_relax(after, x), run_relax(before, x))


@pytest.mark.parametrize("make,reason", [
    (lambda: sign_after_binary_conv(shift=1.0), "a reachable result maps to 0"),  # d = -2 gives 0
    (sign_of_input, "can output 0"),
], ids=["zero_reachable", "float_input"])
def test_stays_float_where_zero_is_possible(make, reason):
    before = make()
    after, log = run_pass(lower_sign, before)
    assert not log.changed and any(reason in why for why in log.kept_float.values()), log.kept_float
    assert packs(after) == packs(before)


def test_sign_zero_plus_packs_any_sign():
    before = sign_of_input()
    after, log = run_pass(lower_sign, before, sign_zero="plus")
    assert log.changed and packs(after) == 1
    x = RNG.standard_normal(SHAPE).astype(np.float32)
    x[0, 0, 0, :] = 0.0
    np.testing.assert_array_equal(run_relax(after, x), np.where(x >= 0, 1, -1))
