"""``LiftTokenMatmul`` on small Relax modules: a matmul of binarized tokens ``[N, T, C]`` with a
constant weight becomes a dense over the ``N * T`` rows (the binarizer rebuilt on the rows), and
a batch norm between two ``transpose(1, 2)``s of point features moves onto the rows with the
transposes cancelled; each computes the same values. A matmul of float tokens is left alone."""

from __future__ import annotations

import numpy as np
from tvm import relax

from conftest import emit_binarizer, relax_ops, run_pass, run_relax

from bnn_tvm.relay_passes.lift_token_matmul import LIFTED, ROWS, lift_token_matmul

RNG = np.random.default_rng(29)
TOKENS = [2, 5, 12]  # [N, T, C]


def token_matmul(binarized: bool):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(TOKENS, "float32"))
    weight = relax.const(np.where(RNG.standard_normal((12, 7)) >= 0, 1, -1).astype(np.float32))
    with bb.function("main", [x]):
        with bb.dataflow():
            data = emit_binarizer(bb, x) if binarized else x
            out = bb.emit_output(relax.op.matmul(data, weight))
        bb.emit_func_output(out)
    return bb.get()


def point_batch_norm():
    """``T(bn(T(x)))`` on ``[B, N, C]`` points (``T`` = ``transpose(1, 2)``), then a matmul."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(TOKENS, "float32"))
    weight = relax.const(RNG.standard_normal((12, 7)).astype(np.float32))
    gamma, beta, mean = (relax.const(RNG.standard_normal(12).astype(np.float32)) for _ in range(3))
    var = relax.const(RNG.uniform(0.5, 2, 12).astype(np.float32))
    with bb.function("main", [x]):
        with bb.dataflow():
            channels_first = bb.emit(relax.op.permute_dims(x, [0, 2, 1]))
            bn = bb.emit(relax.op.nn.batch_norm(channels_first, gamma, beta, mean, var, axis=1, training=False))
            back = bb.emit(relax.op.permute_dims(bb.emit(relax.TupleGetItem(bn, 0)), [0, 2, 1]))
            out = bb.emit_output(relax.op.matmul(back, weight))
        bb.emit_func_output(out)
    return bb.get()


def test_fires_binarized_tokens_become_a_dense_over_rows():
    before = token_matmul(binarized=True)
    after, log = run_pass(lift_token_matmul, before)
    assert log.changed and [r.kernel for r in log.rewrites] == [LIFTED]
    assert "over 10 rows" in log.rewrites[0].detail
    x = RNG.standard_normal(TOKENS).astype(np.float32)
    x[0, 0, :4] = 0.0
    np.testing.assert_array_equal(run_relax(after, x), run_relax(before, x))


def test_fires_a_point_batch_norm_moves_onto_the_rows():
    before = point_batch_norm()
    after, log = run_pass(lift_token_matmul, before)
    # the matmul then reads the rows too
    assert log.changed and set(r.kernel for r in log.rewrites) == {ROWS, LIFTED}
    assert "relax.permute_dims" not in relax_ops(after)
    x = RNG.standard_normal(TOKENS).astype(np.float32)
    np.testing.assert_array_equal(run_relax(after, x), run_relax(before, x))  # the same float32 ops


def test_float_tokens_are_left_alone():
    before = token_matmul(binarized=False)
    after, log = run_pass(lift_token_matmul, before)
    assert not log.changed and relax_ops(after) == ["relax.matmul"]
