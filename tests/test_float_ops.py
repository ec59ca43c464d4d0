"""Float operator schedules (``schedules.float_ops``): bit-identical to TVM's default lowering,
and really parallel / vectorised.

Each model is compiled twice through the compiler (``compile_onnx``): with the float schedules
(the default) and with ``BNN_FLOAT_SCHEDULES=0`` (TVM's default lowering of the float ops); the
outputs must be equal bit for bit (``np.array_equal``), on inputs with large and small values.
"""

from __future__ import annotations

import numpy as np
import pytest

from bnn_tvm import schedules
from bnn_tvm import targets
from bnn_tvm.compilation.compiler import compile_onnx, lower_onnx
from bnn_tvm.compilation.runtime import CompiledRunner
from bnn_tvm.schedules import float_ops
from onnx_builders import GraphBuilder, save


def float_model(channels=16, size=14, classes=40):
    """BN -> ReLU -> MaxPool(3, s2, pad 1) -> residual Mul/Add -> AvgPool(2, s2) -> global mean
    -> Flatten -> Gemm: the float ops of a Bi-Real/ResNet stem, blocks and head."""
    g = GraphBuilder((1, channels, size, size), seed=3)
    y = g.batch_norm("x", *g.random_bn(channels))
    y = g.node("Relu", [y])
    y = g.node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    scale = g.const(g.rng.uniform(0.5, 1.5, (1, channels, 1, 1)).astype(np.float32))
    y = g.node("Add", [g.node("Mul", [y, scale]), y])
    y = g.node("AveragePool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = g.node("ReduceMean", [y, g.const(np.array([2, 3], np.int64))], keepdims=1)
    y = g.node("Flatten", [y])
    weight = g.rng.standard_normal((classes, channels)).astype(np.float32)
    y = g.node("Gemm", [y, g.const(weight), g.const(g.rng.standard_normal(classes).astype(np.float32))], transB=1)
    return g.model([y])


def big_bn_model():
    """A stem-sized BN followed by a residual add of a per-channel bias (wide, contiguous rows)."""
    g = GraphBuilder((1, 8, 32, 32), seed=5)
    y = g.batch_norm("x", *g.random_bn(8))
    y = g.node("Add", [y, g.const(g.rng.standard_normal((1, 8, 1, 1)).astype(np.float32))])
    return g.model([y])


def token_matmul_model(tokens=8, features=64, out=32):
    """``x [1, T, K] @ W [K, J] + b``: a linear layer on every token (DFSMN's frame features),
    the hand-written matmul over ``T`` rows."""
    g = GraphBuilder((1, tokens, features), seed=7)
    weight = g.rng.standard_normal((features, out)).astype(np.float32)
    y = g.node("MatMul", ["x", g.const(weight)])
    y = g.node("Add", [y, g.const(g.rng.standard_normal(out).astype(np.float32))])
    return g.model([y])


def inputs(shape):
    rng = np.random.default_rng(11)
    return [rng.standard_normal(shape).astype(np.float32) * scale for scale in (1.0, 1e3, 1e-3)]


def compiled_outputs(path, xs, monkeypatch, enabled: bool):
    monkeypatch.setenv("BNN_FLOAT_SCHEDULES", "1" if enabled else "0")
    runner = CompiledRunner(compile_onnx(path, "x86").executable)
    return [runner.run(x)[0] for x in xs]


@pytest.mark.parametrize("build", [float_model, big_bn_model, token_matmul_model])
def test_float_schedules_bit_identical_to_default_lowering(tmp_path, monkeypatch, build):
    monkeypatch.setenv("BNN_STRICT_SCHEDULES", "1")  # a schedule that fails is an error here
    path = save(build(), tmp_path / "model.onnx")
    shape = lower_onnx(path, 1).input_shape
    xs = inputs(shape)
    scheduled = compiled_outputs(path, xs, monkeypatch, True)
    default = compiled_outputs(path, xs, monkeypatch, False)
    for got, want in zip(scheduled, default):
        assert np.array_equal(got, want), np.abs(got - want).max()


def scheduled_float_funcs(path):
    plans = {}
    mod = schedules.schedule_module(lower_onnx(path, 1).mod, targets.get("x86"), plans)
    funcs = {gvar.name_hint: func for gvar, func in mod.functions_items()
             if hasattr(func, "attrs") and func.attrs is not None and float_ops.FLOAT_OP_ATTR in func.attrs}
    return funcs, plans


def test_float_kernels_are_parallel_and_vectorised(tmp_path, monkeypatch):
    monkeypatch.setenv("BNN_STRICT_SCHEDULES", "1")
    monkeypatch.setenv("BNN_FLOAT_SCHEDULES", "1")
    funcs, plans = scheduled_float_funcs(save(float_model(channels=64, size=56, classes=1000), tmp_path / "m.onnx"))
    names = set(funcs)
    for op in ("batch_norm", "add", "multiply", "matmul", "max_pool2d", "avg_pool2d", "mean"):
        assert any(n.startswith(op) for n in names), (op, sorted(names))
    for name, func in funcs.items():
        assert func.attrs["tirx.is_scheduled"], name
        text = func.script()
        if name.startswith(("batch_norm", "add", "multiply", "matmul")):
            assert "T.vectorized" in text, (name, plans[name])
        if name.startswith(("batch_norm", "multiply", "matmul", "max_pool2d")):
            assert "T.parallel" in text, (name, plans[name])
    # the 2x2 average pool's window slides along rows at stride 2: left to LLVM's loop
    # vectorizer in the default loop order, not interleaved in scalar registers (9x the
    # executed instructions on the Cortex-A53)
    avg = next(n for n in names if n.startswith("avg_pool2d"))
    assert "pool_sum default loop order" in plans[avg] and "interleaved" not in plans[avg], plans[avg]
    # the residual add (64 x 28 x 28) is parallel; the Gemm's bias add (1000 values) may run serially
    assert any("T.parallel" in f.script() for n, f in funcs.items() if n.startswith("add")), plans
    # the FC layer: its constant weight blocked at compile time (schedules.float_matmul); k
    # outside, in order, around vectors of outputs kept in registers
    matmul_name, matmul = next((n, f) for n, f in funcs.items() if n.startswith("matmul"))
    assert "weight blocked" in plans[matmul_name], plans[matmul_name]
    text = matmul.script()
    k_loop = text.index("for k in range(")
    assert '"local"' in text and k_loop < text.index("T.vectorized", k_loop) < text.index('T.sblock("matmul_update")')


def test_batch_norm_keeps_multiply_and_add_apart(tmp_path, monkeypatch):
    """Inlining ``x * gamma`` into ``+ beta`` would let LLVM contract them into an FMA (one
    rounding instead of two): the multiply stays a block of its own, the subtract and divide
    before it are inlined."""
    monkeypatch.setenv("BNN_FLOAT_SCHEDULES", "1")
    funcs, plans = scheduled_float_funcs(save(big_bn_model(), tmp_path / "bn.onnx"))
    bn = next(n for n in funcs if n.startswith("batch_norm"))
    text = funcs[bn].script()
    assert 'T.sblock("T_multiply")' in text and 'T.sblock("T_add_1")' in text
    assert 'T.sblock("T_subtract")' not in text and 'T.sblock("T_divide")' not in text
    assert float_ops._may_contract({"mul"}, {"add"}) and not float_ops._may_contract({"add"}, {"mul"})


def test_disabled_leaves_float_ops_to_tvm(tmp_path, monkeypatch):
    monkeypatch.setenv("BNN_FLOAT_SCHEDULES", "0")
    funcs, _ = scheduled_float_funcs(save(big_bn_model(), tmp_path / "bn.onnx"))
    assert funcs == {}


def max_pool_model(size, kernel, stride, pads, ceil_mode=0, channels=5):
    """A max pool straight on the (signed) input, so border windows see negative values: a
    window tap standing in for the padding must not change the max."""
    g = GraphBuilder((1, channels, *size), seed=7)
    y = g.node("MaxPool", ["x"], kernel_shape=list(kernel), strides=list(stride), pads=list(pads), ceil_mode=ceil_mode)
    return g.model([y])


@pytest.mark.parametrize(
    "size,kernel,stride,pads,ceil_mode",
    [
        ((112, 112), (3, 3), (2, 2), (1, 1, 1, 1), 0),  # the ResNet stem pool
        ((15, 13), (3, 3), (2, 2), (1, 1, 1, 1), 0),  # odd sizes
        ((14, 14), (2, 2), (2, 2), (0, 0, 0, 0), 0),  # no padding
        ((9, 10), (3, 2), (1, 2), (1, 0, 1, 1), 0),  # asymmetric kernel, stride and padding
        ((10, 10), (3, 3), (2, 2), (0, 0, 0, 0), 1),  # ceil mode: the last window hangs over
    ],
)
def test_max_pool_clamped_windows_bit_identical(tmp_path, monkeypatch, size, kernel, stride, pads, ceil_mode):
    monkeypatch.setenv("BNN_STRICT_SCHEDULES", "1")
    path = save(max_pool_model(size, kernel, stride, pads, ceil_mode), tmp_path / "pool.onnx")
    monkeypatch.setenv("BNN_FLOAT_SCHEDULES", "1")
    funcs, plans = scheduled_float_funcs(path)
    assert any("clamped windows" in plan for plan in plans.values()), plans
    xs = inputs([1, 5, *size])
    scheduled = compiled_outputs(path, xs, monkeypatch, True)
    default = compiled_outputs(path, xs, monkeypatch, False)
    for x, got, want in zip(xs, scheduled, default):
        assert np.array_equal(got, want)
        assert np.array_equal(got, numpy_max_pool(x, kernel, stride, pads, got.shape[2:]))


def numpy_max_pool(x, kernel, stride, pads, out_hw):
    """Max over each window of ``x`` padded with -inf (ONNX's MaxPool semantics)."""
    top, left, bottom, right = pads[0], pads[1], pads[2], pads[3]
    extra = [max(0, (o - 1) * s + k - (size + lo + hi)) for o, s, k, size, lo, hi in
             zip(out_hw, stride, kernel, x.shape[2:], (top, left), (bottom, right))]  # ceil mode overhang
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom + extra[0]), (left, right + extra[1])), constant_values=-np.inf)
    out = np.full((*x.shape[:2], *out_hw), -np.inf, np.float32)
    for r in range(kernel[0]):
        for c in range(kernel[1]):
            window = padded[:, :, r : r + stride[0] * out_hw[0] : stride[0], c : c + stride[1] * out_hw[1] : stride[1]]
            out = np.maximum(out, window[:, :, : out_hw[0], : out_hw[1]])
    return out


def test_max_pool_window_outside_input_keeps_default_lowering(tmp_path, monkeypatch):
    """A window entirely in the padding (pad >= kernel) has no tap to stand in for it: that pool
    stays on TVM's lowering (which returns its pad value there)."""
    from bnn_tvm.schedules import max_pool

    assert max_pool.window_overlaps(112, 56, 3, 2, 1)
    assert not max_pool.window_overlaps(4, 4, 1, 1, 1)  # output 0 reads input -1 only
    monkeypatch.setenv("BNN_FLOAT_SCHEDULES", "1")
    path = save(max_pool_model((4, 4), (1, 1), (1, 1), (1, 1, 1, 1)), tmp_path / "pool.onnx")
    _, plans = scheduled_float_funcs(path)
    assert not any("clamped windows" in plan for plan in plans.values()), plans


def test_tuner_sees_the_hand_written_float_kernels(tmp_path, monkeypatch):
    """``tune`` and ``compile --db`` prepare the module as the build does: max pools and
    constant-weight matmuls are the hand-written kernels (not TVM's legalized ones, which a
    database-compiled model would otherwise run), and they are not offered for tuning."""
    import tvm

    from bnn_tvm.schedules import tuning

    monkeypatch.setenv("BNN_FLOAT_SCHEDULES", "1")
    path = save(float_model(channels=16, size=14), tmp_path / "m.onnx")
    mod = tuning.prepare_module(lower_onnx(path, 1).mod, targets.get("x86"))
    plans = [str(f.attrs[float_ops.FLOAT_OP_ATTR]) for _, f in mod.functions_items()
             if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and float_ops.FLOAT_OP_ATTR in f.attrs]
    assert any("clamped windows" in p for p in plans) and any("weight blocked" in p for p in plans), plans
    offered = [gvar.name_hint for gvar, _, _ in tuning.tunable_kernels(mod)]
    assert not any(name.startswith(("max_pool2d", "matmul")) for name in offered), offered
