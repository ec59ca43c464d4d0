"""The float parts of a transformer block on CPU (issue 28 item 4): GELU/Erf with the vectorisable
float32 erf (``schedules.float_erf``) and LayerNorm's row reductions interleaved.

* ``erf_f32`` against the correctly rounded erf (scipy's float64 erf, rounded once) and against
  the C library's ``erff`` that TVM's default lowering calls: at most 1 ulp from the first; the
  same sign and the same ``±1`` set as the second (what a binarizer after a GELU depends on).
* GELU (the ONNX ``Gelu`` op both of PyTorch's exporters emit, and the decomposed
  ``x * 0.5 * (1 + erf(x / sqrt 2))``): within float rounding of the default lowering and of ONNX
  Runtime, and ``Sign(GELU(x))`` identical to the default lowering's on 0, ±tiny, negatives down
  to the ``erf = -1`` boundary and beyond, large magnitudes, ±inf and NaN.
* LayerNorm: bit-identical to the default lowering (same sums in the same order), as the
  hand-written kernel and as ``float_ops``' interleaved rows.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from bnn_tvm import schedules
from bnn_tvm import targets
from bnn_tvm.compilation.compiler import compile_onnx, lower_onnx
from bnn_tvm.compilation.runtime import CompiledRunner
from onnx_builders import GraphBuilder, save
from bnn_tvm.schedules import float_erf, float_ops

ONE_BITS = 1081791557  # float32 bits of float_erf.ERF_ONE


def _erf_kernels():
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tools"))
    from erf_accuracy import erf_kernels, ulp_distance

    return erf_kernels({"kind": "llvm"}), ulp_distance


def special_values() -> np.ndarray:
    one = np.int32(ONE_BITS)
    near_one = np.arange(one - 300, one + 300, dtype=np.int32).view(np.float32)
    tiny = np.array([1e-45, 3e-45, 1e-40, 1.1754944e-38, 1e-30, 1e-10, 2.0**-12], np.float32)
    edges = np.array([0.0, 1.0, 1.5, 2.0, 0.99999994, 1.0000001, 1.9999999, 2.0000002, 3.5, 4.0, 6.0, 10.0,
                      1e10, 1e30, 3.4028235e38, np.inf], np.float32)
    values = np.concatenate([near_one, tiny, edges])
    return np.concatenate([values, -values, np.array([np.nan, -0.0], np.float32)])


def test_erf_within_one_ulp_and_same_sign_and_ones_as_libm():
    from scipy import special

    (fast, libm), ulp_distance = _erf_kernels()
    start, stop = np.float32(2.0**-12).view(np.int32), np.float32(4.0).view(np.int32)
    y = np.arange(start, stop, 997, dtype=np.int32).view(np.float32)
    y = np.concatenate([y, -y, special_values()])
    got, ref = fast(y), libm(y)
    finite = np.isfinite(y)
    exact = special.erf(y.astype(np.float64)).astype(np.float32)
    assert ulp_distance(got[finite], exact[finite]).max() <= 1
    assert ulp_distance(got[finite], ref[finite]).max() <= 1  # glibc's erff is within 1 ulp too
    nan = np.isnan(y)
    assert np.all(np.isnan(got[nan])) and not np.any(np.isnan(got[~nan]))
    assert np.array_equal(np.sign(got[~nan]), np.sign(ref[~nan]))
    assert np.array_equal(np.abs(got) == 1, np.abs(ref) == 1)  # exactly ±1 for the same inputs
    assert np.array_equal(np.signbit(got[y == 0]), np.signbit(y[y == 0]))  # erf(-0) = -0
    assert fast(np.float32([float_erf.ERF_ONE]))[0] == 1
    assert fast(np.nextafter(np.float32([float_erf.ERF_ONE]), np.float32(0)))[0] < 1


def gelu_model(form: str, shape=(1, 16, 64), sign: bool = False):
    g = GraphBuilder(shape, seed=1)
    if form == "op":
        y = g.node("Gelu", ["x"])
    else:  # torch's decomposition: x * 0.5 * (1 + erf(x / sqrt(2)))
        erf = g.node("Erf", [g.node("Div", ["x", g.const(np.float32(np.sqrt(2.0)))])])
        y = g.node("Mul", [g.node("Mul", ["x", g.const(np.float32(0.5))]), g.node("Add", [erf, g.const(np.float32(1))])])
    y = g.node("Sign", [y]) if sign else y
    model = g.model([y])
    if form == "op":
        del model.opset_import[:]
        model.opset_import.append(helper.make_opsetid("", 20))  # Gelu: opset 20
    return model


def gelu_inputs(shape=(1, 16, 64)) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    size = int(np.prod(shape))
    boundary = -float_erf.ERF_ONE * np.sqrt(2)  # GELU is 0 from about here down (erf = -1)
    edge = np.float32(boundary) + np.arange(-size // 2, size - size // 2).astype(np.float32) * np.float32(4.8e-7)
    with np.errstate(over="ignore"):
        special = np.resize(special_values() * np.float32(1.4142135), size)
    return [x.reshape(shape).astype(np.float32) for x in (rng.standard_normal(size) * 3, edge, special,
                                                          rng.standard_normal(size) * 1e4)]


def run_model(path, xs, monkeypatch, **env):
    for key in ("BNN_LIBM_ERF", "BNN_FLOAT_SCHEDULES"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runner = CompiledRunner(compile_onnx(path, "x86").executable)
    return [runner.run(x)[0] for x in xs]


def ort_outputs(path, xs):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [session.run(None, {"x": x})[0] for x in xs]


@pytest.mark.parametrize("form", ["op", "decomposed"])
def test_gelu_within_rounding_and_its_sign_identical(tmp_path, monkeypatch, form):
    monkeypatch.setenv("BNN_STRICT_SCHEDULES", "1")
    xs = gelu_inputs()
    path = save(gelu_model(form), tmp_path / "gelu.onnx")
    fast = run_model(path, xs, monkeypatch)
    default = run_model(path, xs, monkeypatch, BNN_FLOAT_SCHEDULES="0")
    reference = ort_outputs(path, xs)
    for x, got, want, ort_want in zip(xs, fast, default, reference):
        assert np.array_equal(np.isnan(got), np.isnan(want))
        ok = np.isfinite(want)
        # 1 ulp of erf near -1 is a large relative change of the tiny GELU there (x < -3):
        # compare in absolute terms against the larger of |x| * 2^-23 and 1e-5 * |want|
        tolerance = np.maximum(np.abs(x[ok]) * 2.0**-23, 1e-5 * np.abs(want[ok])) + 1e-30
        assert np.all(np.abs(got[ok] - want[ok]) <= tolerance)
        assert np.all(np.abs(got[ok] - ort_want[ok]) <= tolerance)
        assert np.array_equal(got[~ok], want[~ok])  # ±inf
        assert np.array_equal(got == 0, want == 0) and np.array_equal(np.sign(got[ok]), np.sign(want[ok]))
    sign_path = save(gelu_model(form, sign=True), tmp_path / "gelu_sign.onnx")
    fast_sign = run_model(sign_path, xs, monkeypatch)
    default_sign = run_model(sign_path, xs, monkeypatch, BNN_FLOAT_SCHEDULES="0")
    for got, want in zip(fast_sign, default_sign):
        assert np.array_equal(got, want, equal_nan=True)
    zeros = sum(int(np.count_nonzero(s == 0)) for s in fast_sign)
    assert zeros > 100  # the boundary sweep reaches GELU = 0 (erf = -1) on many values


def test_gelu_kernel_vectorised(tmp_path, monkeypatch):
    """GELU is one hand-written chain kernel (``schedules.float_elementwise``): explicit vectors,
    erf's branches per vector, no libm call; with ``BNN_LIBM_ERF=1`` the legalized op calls ``erff``."""
    monkeypatch.setenv("BNN_STRICT_SCHEDULES", "1")
    monkeypatch.delenv("BNN_LIBM_ERF", raising=False)
    path = save(gelu_model("op", (1, 64, 1024)), tmp_path / "gelu.onnx")
    plans = {}
    mod = schedules.schedule_module(lower_onnx(path, 1).mod, targets.get("x86"), plans)
    gelu = next(f for g, f in mod.functions_items() if g.name_hint.startswith("elementwise_chain"))
    text = gelu.script()
    assert "T.Ramp" in text and "llvm.vector.reduce.or" in text and "T.erf" not in text and "T.parallel" in text
    monkeypatch.setenv("BNN_LIBM_ERF", "1")
    mod = schedules.schedule_module(lower_onnx(path, 1).mod, targets.get("x86"), {})
    assert "T.erf" in next(f for g, f in mod.functions_items() if g.name_hint.startswith("gelu")).script()


def layer_norm_model(shape=(1, 64, 256)):
    g = GraphBuilder(shape, seed=2)
    hidden = shape[-1]
    gamma = g.const(g.rng.uniform(0.5, 1.5, hidden).astype(np.float32))
    beta = g.const(g.rng.standard_normal(hidden).astype(np.float32))
    y = g.node("LayerNormalization", [g.node("Add", ["x", g.const(g.rng.standard_normal(shape).astype(np.float32))]),
                                      gamma, beta], axis=-1, epsilon=1e-5)
    return g.model([y])


@pytest.mark.parametrize("shape,plan", [((1, 64, 256), "rows' sums as one vector"), ((1, 6, 40), "outputs interleaved")])
def test_layer_norm_bit_identical(tmp_path, monkeypatch, shape, plan):
    """Rows in whole vectors: the hand-written kernel (``schedules.layer_norm``, a vector of rows'
    sums per step); other row counts: ``float_ops``' interleaved rows. Both bit-identical."""
    monkeypatch.setenv("BNN_STRICT_SCHEDULES", "1")
    path = save(layer_norm_model(shape), tmp_path / "ln.onnx")
    rng = np.random.default_rng(3)
    xs = [(rng.standard_normal(shape) * s).astype(np.float32) for s in (1.0, 1e3, 1e-3)]
    xs.append(np.zeros(shape, np.float32))
    xs.append((rng.standard_normal(shape) + 100).astype(np.float32))  # a large mean: (x - mean) cancels
    scheduled = run_model(path, xs, monkeypatch)
    default = run_model(path, xs, monkeypatch, BNN_FLOAT_SCHEDULES="0")
    for got, want in zip(scheduled, default):
        assert np.array_equal(got, want)
    for got, want in zip(scheduled, ort_outputs(path, xs)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    monkeypatch.delenv("BNN_FLOAT_SCHEDULES", raising=False)
    plans = {}
    schedules.schedule_module(lower_onnx(path, 1).mod, targets.get("x86"), plans)
    assert plan in next(p for n, p in plans.items() if n.startswith("layer_norm")), plans
    assert float_ops.INTERLEAVE_FACTORS[0] == 8
