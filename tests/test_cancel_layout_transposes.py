"""``CancelLayoutTransposes`` on small Relax modules: ``T2(f(T1(x)))`` with ``T2`` undoing ``T1``
becomes ``f'(x)`` for elementwise ops and pads, constants and pad widths following the axes, and
the pass leaves every other chain alone. Each rewrite is checked to compute the same values."""

from __future__ import annotations

import numpy as np
import pytest
from tvm import relax

from bnn_tvm.relay_passes.cancel_layout_transposes import LAYOUT, cancel_layout_transposes
from conftest import relax_ops, run_pass, run_relax

from bnn_tvm.relay_passes.common import op_name

NCHW = [1, 3, 4, 5]
TO_NHWC, TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]
RNG = np.random.default_rng(3)


def wrapped(body, outer=TO_NCHW, shape=NCHW):
    """``main(x) = permute(body(permute(x, TO_NHWC)), outer)``: tf2onnx's shape of a binarizer."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            inner = bb.emit(relax.op.permute_dims(x, TO_NHWC))
            out = bb.emit_output(relax.op.permute_dims(body(bb, inner), outer))
        bb.emit_func_output(out)
    return bb.get()


def larq_binarizer(bb, t):
    """Larq's ``sign(sign(x) + 0.1)``, then its ``Pad(value=1)`` in NHWC (height and width)."""
    sign = bb.emit(relax.op.sign(bb.emit(relax.op.add(bb.emit(relax.op.sign(t)), relax.const(np.float32(0.1))))))
    return bb.emit(relax.op.nn.pad(sign, [0, 0, 1, 1, 0, 2, 0, 0], "constant", 1.0))


def full_rank_scale(bb, t):
    """A per-element NHWC constant: transposed along with the tensor."""
    return bb.emit(relax.op.multiply(t, relax.const(RNG.standard_normal([1, 4, 5, 3]).astype(np.float32))))


def per_channel_bias(bb, t):
    """A ``[C]`` constant broadcast along NHWC's last axis: in NCHW it must follow axis 1."""
    return bb.emit(relax.op.add(t, relax.const(np.array([1.0, -2.0, 3.0], np.float32))))


def two_tensors(bb, t):
    return bb.emit(relax.op.add(t, t))


@pytest.mark.parametrize("body", [larq_binarizer, full_rank_scale, per_channel_bias])
def test_fires_and_computes_the_same(body):
    before = wrapped(body)
    after, log = run_pass(cancel_layout_transposes, before)
    assert log.changed and [r.kernel for r in log.rewrites] == [LAYOUT]
    assert "relax.permute_dims" not in relax_ops(after)
    x = RNG.standard_normal(NCHW).astype(np.float32)
    x[0, 0, 0, :2] = 0  # Sign(0) = 0 on both paths
    np.testing.assert_array_equal(run_relax(after, x), run_relax(before, x))


def test_a_per_channel_constant_follows_the_channels_where_width_equals_channels():
    """With as many columns as channels an untransposed ``[C]`` constant would still broadcast,
    along the columns: a silent wrong answer, not a shape error."""
    shape = [1, 3, 2, 3]
    before = wrapped(per_channel_bias, shape=shape)
    after, log = run_pass(cancel_layout_transposes, before)
    assert log.changed
    x = RNG.standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(run_relax(after, x), x + np.array([1.0, -2.0, 3.0], np.float32)[None, :, None, None])
    np.testing.assert_array_equal(run_relax(after, x), run_relax(before, x))


def test_the_pad_widths_follow_the_axes():
    after, _ = run_pass(cancel_layout_transposes, wrapped(larq_binarizer))
    (pad,) = [e for e in _calls(after) if op_name(e) == "relax.nn.pad"]
    # NHWC (H: 1, 1; W: 0, 2) is NCHW axes 2 and 3
    assert [int(w) for w in pad.attrs.pad_width] == [0, 0, 0, 0, 1, 1, 0, 2]


@pytest.mark.parametrize("body,outer", [
    (two_tensors, TO_NCHW),  # an op of two tensors stops the rewrite
    (full_rank_scale, [0, 1, 2, 3][::-1]),  # the outer transpose does not undo the inner one
], ids=["two_tensors", "not_inverse"])
def test_leaves_other_chains_alone(body, outer):
    before = wrapped(body, outer)
    after, log = run_pass(cancel_layout_transposes, before)
    assert not log.changed
    assert relax_ops(after).count("relax.permute_dims") == 2


def _calls(mod) -> list:
    found = []
    relax.analysis.post_order_visit(mod["main"], lambda e: found.append(e) if isinstance(e, relax.Call) else None)
    return found
