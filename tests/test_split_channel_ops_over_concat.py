"""``SplitChannelOpsOverConcat`` on small Relax modules: a per-channel op after a channel concat
(ReActNet's reduction block: RPReLU on ``concat(a, b)``) runs on each part with its slice of the
constants, the same float32 op on the same values; a concat whose part is read elsewhere keeps
the op after it."""

from __future__ import annotations

import numpy as np
from tvm import relax

from conftest import relax_ops, run_pass, run_relax

from bnn_tvm.relay_passes.split_channel_ops_over_concat import SPLIT, split_channel_ops_over_concat

RNG = np.random.default_rng(31)
SHAPE = [1, 6, 4, 4]


def concat_then_prelu(part_read_elsewhere: bool = False):
    """``prelu(concat(x * 2, x + 1) - c)``: two parts of 6 channels each, per-channel constants over 12."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(SHAPE, "float32"))
    shift = relax.const(RNG.standard_normal((1, 12, 1, 1)).astype(np.float32))
    slope = relax.const(RNG.uniform(0.1, 0.9, 12).astype(np.float32))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.multiply(x, relax.const(np.float32(2.0))))
            b = bb.emit(relax.op.add(x, relax.const(np.float32(1.0))))
            joined = bb.emit(relax.op.concat([a, b], axis=1))
            out = bb.emit(relax.op.nn.prelu(bb.emit(relax.op.subtract(joined, shift)), slope))
            result = bb.emit_output(relax.Tuple([out, a]) if part_read_elsewhere else out)
        bb.emit_func_output(result)
    return bb.get()


def test_fires_each_part_takes_its_slice_and_the_values_stay():
    before = concat_then_prelu()
    after, log = run_pass(split_channel_ops_over_concat, before)
    assert log.changed and {r.kernel for r in log.rewrites} == {SPLIT}
    ops = relax_ops(after)
    assert ops[-1] == "relax.concat"  # the concat is last: the ops run on the parts
    x = RNG.standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_array_equal(run_relax(after, x), run_relax(before, x))


def test_a_part_read_elsewhere_keeps_the_op_after_the_concat():
    before = concat_then_prelu(part_read_elsewhere=True)
    after, log = run_pass(split_channel_ops_over_concat, before)
    assert not log.changed
