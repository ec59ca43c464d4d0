"""``LowerMultibit`` on small Relax modules: DoReFa's ``Round(Clip(x, 0, 1) * L) / L`` becomes k
packed bit planes (``pack_levels``) and their unpack, computing the same values, rounding ties
(half to even, as ONNX's Round) included; more bits than the planes take stay float."""

from __future__ import annotations

import numpy as np
import pytest
from tvm import relax

from conftest import bnn_kernels, run_pass, run_relax

from bnn_tvm.relay_passes.lower_multibit import MAX_BITS, lower_multibit

SHAPE = [1, 8, 5, 5]


def dorefa(bits: int):
    levels = np.float32(2**bits - 1)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            clipped = bb.emit(relax.op.clip(x, 0.0, 1.0))
            rounded = bb.emit(relax.op.round(relax.op.multiply(clipped, relax.const(levels))))
            out = bb.emit_output(relax.op.divide(rounded, relax.const(levels)))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_fires_k_planes_with_the_same_values_ties_included(bits):
    before = dorefa(bits)
    after, log = run_pass(lower_multibit, before)
    assert log.changed and [r.kernel for r in log.rewrites] == ["pack_levels"]
    assert f"{bits}-bit activation" in log.rewrites[0].detail
    assert bnn_kernels(after) == ["pack_levels", "unpack_levels"]
    levels = 2**bits - 1
    x = np.random.default_rng(bits).uniform(-0.5, 1.5, SHAPE).astype(np.float32)
    ties = (np.arange(levels) + 0.5) / levels  # x * L exactly half way between two levels
    x.reshape(-1)[: len(ties)] = ties.astype(np.float32)
    np.testing.assert_array_equal(run_relax(after, x), run_relax(before, x))


def test_more_bits_than_planes_take_stay_float():
    _, log = run_pass(lower_multibit, dorefa(MAX_BITS + 1))
    assert not log.changed
