"""Chains of elementwise float ops around ``erf`` as one CPU kernel (``schedules.float_elementwise``,
run by ``HandWrittenFloatOps``): a GELU, as the ``nn.gelu`` op or decomposed as ONNX graphs write
it, computes bit for bit what the op-by-op kernels (``schedules.float_ops``, ``erf`` as
``float_erf.erf_f32``) compute, on vectors whose lanes all take erf's short branch, on vectors
mixing the branches, on NaN, ±inf, ±0 and denormals, with and without a scalar tail; the chain
stops at a value read outside it; chains without ``erf`` and ``BNN_LIBM_ERF=1`` are left alone."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from conftest import relax_ops
from test_float_erf import gelu_inputs

from bnn_tvm import schedules, targets
from bnn_tvm.relay_passes.hand_written_float_ops import hand_written_float_ops
from bnn_tvm.schedules import float_elementwise, float_ops

SQRT2 = np.float32(1.4142135381698608)


def chain_module(form: str, shape):
    """``main(x)``: a float chain of the given ``form`` on ``x`` of ``shape``."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    flat = [int(np.prod(shape))]
    with bb.function("main", [x]):
        with bb.dataflow():
            if form == "gelu":
                out = bb.emit(relax.op.nn.gelu(x))
            elif form == "erf":
                out = bb.emit(relax.op.erf(x))
            elif form == "decomposed":  # x * (0.5 * (erf(x / sqrt 2) + 1)), with views between, as exported
                divided = bb.emit(relax.op.divide(x, relax.const(SQRT2)))
                erf = bb.emit(relax.op.erf(bb.emit(relax.op.reshape(divided, flat))))
                half = bb.emit(relax.op.multiply(relax.const(np.float32(0.5)), bb.emit(relax.op.add(erf, relax.const(np.float32(1))))))
                out = bb.emit(relax.op.multiply(x, bb.emit(relax.op.reshape(half, shape))))
            elif form == "two_inputs":  # (x * 3) * erf(x * 0.7) - x: the leaf read by three ops
                scaled = bb.emit(relax.op.multiply(x, relax.const(np.float32(3))))
                erf = bb.emit(relax.op.erf(bb.emit(relax.op.multiply(x, relax.const(np.float32(0.7))))))
                out = bb.emit(relax.op.subtract(bb.emit(relax.op.multiply(scaled, erf)), x))
            else:  # no erf: add then multiply
                out = bb.emit(relax.op.multiply(bb.emit(relax.op.add(x, relax.const(np.float32(1)))), relax.const(np.float32(3))))
            result = bb.emit_output(out)
        bb.emit_func_output(result)
    return bb.get()


def build(mod, lanes: int):
    """``mod`` with its remaining Relax ops legalized and scheduled op by op (``float_ops``)."""
    spec = targets.get("x86")
    target = spec.tvm_target()
    mod = float_ops.schedule_float_ops(mod, target, lanes)
    return relax.VirtualMachine(tvm.compile(mod, target), tvm.cpu())


def outputs(vm, x: np.ndarray) -> np.ndarray:
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def inputs(shape) -> list[np.ndarray]:
    """Normal values of standard deviation 0.5 (nearly every vector takes erf's short branch), the
    GELU tests' sweeps (its ``erf = -1`` boundary, specials, large values), and a mix: a few large
    lanes among small ones."""
    size = int(np.prod(shape))
    rng = np.random.default_rng(7)
    small = (rng.standard_normal(size) * 0.5).astype(np.float32)
    mixed = small.copy()
    mixed[rng.choice(size, size // 40, replace=False)] = rng.standard_normal(size // 40).astype(np.float32) * 6
    sweeps = [x.reshape(-1)[:size] for x in gelu_inputs((1, size + size % 2))]  # (its sweep: even sizes)
    return [v.reshape(shape) for v in (small, mixed, *sweeps)]


@pytest.mark.parametrize("form", ["gelu", "decomposed", "erf", "two_inputs"])
@pytest.mark.parametrize("shape,lanes", [((64, 1024), 16), ((3, 37), 16), ((5, 24), 8), ((2, 6), 4), ((1, 6), 16)])
def test_chain_bit_identical_to_the_op_kernels(form, shape, lanes):
    before = chain_module(form, list(shape))
    plans = {}
    after = hand_written_float_ops(lanes32=lanes, plans=plans)(before)
    assert not {"relax.erf", "relax.nn.gelu", "relax.divide", "relax.multiply", "relax.add"} & set(relax_ops(after))
    assert [p for n, p in plans.items() if n.startswith("elementwise_chain")], plans
    fused, op_by_op = build(after, lanes), build(before, lanes)
    for x in inputs(shape):
        got, want = outputs(fused, x), outputs(op_by_op, x)
        assert np.array_equal(got.view(np.int32), want.view(np.int32)), int((got.view(np.int32) != want.view(np.int32)).sum())


def test_short_branch_taken_where_every_lane_is_small():
    func, plan = float_elementwise.chain_kernel(
        float_elementwise.Node("relax.erf", (float_elementwise.Node(leaf=0),)), [[64]], [64], 16)
    text = func.script()
    assert "llvm.vector.reduce.or" in text and "T.erf" not in text
    assert "|y| < 1 branch alone" in plan and "tail" not in plan


def test_chain_stops_at_a_value_read_elsewhere():
    """The divide's value is also an output: it stays its own op, the chain reads it."""
    shape = [4, 64]
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            divided = bb.emit(relax.op.divide(x, relax.const(SQRT2)))
            erf = bb.emit(relax.op.erf(divided))
            out = bb.emit_output(relax.Tuple([bb.emit(relax.op.multiply(x, erf)), divided]))
        bb.emit_func_output(out)
    before = bb.get()
    after = hand_written_float_ops(lanes32=16)(before)
    ops = relax_ops(after)
    assert "relax.divide" in ops and "relax.erf" not in ops and "relax.multiply" not in ops
    value = np.random.default_rng(3).standard_normal(shape).astype(np.float32) * 2
    got, want = build(after, 16)["main"](tvm.runtime.tensor(value)), build(before, 16)["main"](tvm.runtime.tensor(value))
    for g, w in zip(got, want):
        assert np.array_equal(g.numpy().view(np.int32), w.numpy().view(np.int32))


def test_chain_without_erf_left_to_the_float_schedules():
    before = chain_module("no_erf", [8, 64])
    assert relax_ops(hand_written_float_ops(lanes32=16)(before)) == relax_ops(before)


def test_off_with_libm_erf(monkeypatch):
    monkeypatch.setenv("BNN_LIBM_ERF", "1")
    before = chain_module("gelu", [8, 64])
    assert relax_ops(hand_written_float_ops(lanes32=16)(before)) == relax_ops(before)


def test_builds_for_arm():
    """The vector test (``llvm.vector.reduce.or``) and the fences lower for NEON too."""
    mod = schedules.schedule_module(chain_module("decomposed", [4, 64]), targets.get("rasp3b"))
    assert any(g.name_hint.startswith("elementwise_chain") for g, _ in mod.functions_items())
    tvm.compile(mod, targets.get("rasp3b").tvm_target())
