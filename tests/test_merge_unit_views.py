"""``MergeUnitViews`` on small Relax modules: a reshape of a reshape becomes one reshape, a
reshape to its input's shape its input, and ``reshape(pad(reshape(w)))`` with a pad of the last
axis ``pad(w)``; each merged module computes the same values, and other pads stay."""

from __future__ import annotations

import numpy as np
import pytest
from tvm import relax

from conftest import relax_ops, run_pass, run_relax

from bnn_tvm.relay_passes.merge_unit_views import merge_unit_views

ROW = [1, 4, 1, 6]  # a lifted 1-D tensor: [N, C, 1, L]


def module(body, shape=ROW):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(body(bb, x))
        bb.emit_func_output(out)
    return bb.get()


def view_of_view(bb, x):
    return relax.op.reshape(bb.emit(relax.op.reshape(x, [1, 4, 6])), [4, 6])


def view_to_itself(bb, x):
    return relax.op.nn.relu(bb.emit(relax.op.reshape(x, ROW)))


def padded_row(bb, x, axis_widths=(0, 0, 0, 0, 2, 1)):
    """The 1-D network's pad between two one-row views: [N, C, 1, L] -> [N, C, L] -> pad -> back."""
    flat = bb.emit(relax.op.reshape(x, [1, 4, 6]))
    padded = bb.emit(relax.op.nn.pad(flat, list(axis_widths), "constant", 0.0))
    length = 6 + axis_widths[-2] + axis_widths[-1]
    return relax.op.reshape(padded, [1, 4 + axis_widths[2] + axis_widths[3], 1, length])


@pytest.mark.parametrize("body,left", [
    (view_of_view, ["relax.reshape"]),
    (view_to_itself, ["relax.nn.relu"]),
    (padded_row, ["relax.nn.pad"]),
], ids=["view_of_view", "view_to_itself", "padded_row"])
def test_merges_views_and_computes_the_same(body, left):
    before = module(body)
    after, _ = run_pass(merge_unit_views, before)
    assert relax_ops(after) == left
    x = np.random.default_rng(0).standard_normal(ROW).astype(np.float32)
    np.testing.assert_array_equal(run_relax(after, x), run_relax(before, x))


def test_a_pad_of_the_channels_stays_between_its_views():
    """Padding another axis than the last is no pad of the row: the views stay."""
    before = module(lambda bb, x: padded_row(bb, x, (0, 0, 1, 1, 0, 0)))
    after, _ = run_pass(merge_unit_views, before)
    assert relax_ops(after) == relax_ops(before) == ["relax.reshape", "relax.nn.pad", "relax.reshape"]


def test_logs_no_rewrite():
    """A merged view is no fusion: ``inspect`` must not credit a view with an ONNX node."""
    logs = []
    merge_unit_views(logs)(module(view_of_view))
    assert logs and not logs[0].changed
