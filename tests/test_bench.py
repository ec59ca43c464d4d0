"""The ``bench`` command. Benchmarks are commands, not timed tests: these only check
that a tiny run works end to end (all engines, JSON, plot, table) and that bad options fail
clearly. Nothing here asserts a speed."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from bnn_tvm.measure.bench.layers import LayerSpec, RESNET18_LAYERS, parse_layers
from bnn_tvm.cli import main
from bnn_tvm.errors import BnnError


def test_layer_spec_parsing_and_names():
    spec = LayerSpec.parse("conv3x3:64x56x56")
    assert (spec.kernel, spec.channels, spec.height, spec.width, spec.out_channels) == (3, 64, 56, 56, 64)
    assert (spec.stride, spec.pad, spec.batch) == (1, 1, 1)
    assert spec.binary_macs == 56 * 56 * 64 * 64 * 9
    down = LayerSpec.parse("conv3x3:64x56x56,out=128,stride=2")
    assert down.out_hw == (28, 28) and down.name == "conv3x3:64x56x56,out=128,stride=2"
    assert LayerSpec.parse(down.name) == down
    assert len(parse_layers(["resnet18"])) == len(RESNET18_LAYERS)
    ttq = LayerSpec.parse("conv3x3:16x8x8,weights=ttq")
    assert ttq.name == "conv3x3:16x8x8,weights=ttq"
    assert set(np.unique(ttq.weights())) == {np.float32(-1.37), np.float32(0), np.float32(0.61)}  # TTQ's {-a, 0, +b}
    for bad in ["conv3x2:64x56x56", "conv3x3:64x56", "conv3x3:64x56x56,dilation=2", "conv9x9:4x4x4,pad=0",
                "conv3x3:8x8x8,input=ttq"]:
        with pytest.raises(BnnError, match="--layer"):
            LayerSpec.parse(bad)


def test_layer_onnx_is_the_binary_conv_it_names():
    """The layer model is Where(x >= 0, 1, -1) then a zero-padded conv with ±1 weights."""
    import onnxruntime as ort

    spec = LayerSpec.parse("conv3x3:5x6x7,out=3,stride=2")
    session = ort.InferenceSession(spec.onnx_model().SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(spec.input_shape).astype(np.float32)
    x[0, 0, 0, :3] = 0.0
    (got,) = session.run(None, {"x": x})
    import torch

    expected = spec.torch_float_twin()(torch.from_numpy(np.where(x >= 0, 1.0, -1.0).astype(np.float32))).detach().numpy()
    np.testing.assert_array_equal(got, expected)
    assert set(np.unique(spec.weights())) == {-1.0, 1.0}


def test_bench_smoke_all_engines(tmp_path, capsys):
    """A tiny layer through every engine: JSON in the documented form, a plot, a table."""
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main(["bench", "--layer", "conv3x3:32x8x8", "--repeat", "3", "--json", str(out_json), "--plot", str(out_png)])
    assert code == 0
    report = json.loads(out_json.read_text())
    assert set(report["engines"]) == {"bnn_tvm", "tvm_fp32", "torch_fp32", "ort_fp32", "topi_bitserial"}
    for name, engine in report["engines"].items():
        assert "error" not in engine, (name, engine)
        assert engine["median_ms"] > 0 and engine["runs"] >= 3
        assert report["speedup"][name] == pytest.approx(engine["median_ms"] / report["engines"]["bnn_tvm"]["median_ms"])
    assert report["speedup"]["bnn_tvm"] == pytest.approx(1.0)
    assert report["max_abs_diff_vs_reference"] == {"bnn_tvm": 0.0, "tvm_fp32": 0.0}  # integer results: exact
    assert report["threads"] == 1 and report["machine"]["cores"] >= 1
    limit = report["popcount_limit"]
    assert 0 < limit["fraction"] < 1.5
    assert limit["limit_ms"] == pytest.approx(report["binary_macs"] / limit["gmacs_per_s"] / 1e6)
    for name in ("topi_bitserial", "torch_fp32"):  # a ratio is its ceiling times the fraction reached
        assert limit["speedup_at_limit"][name] == pytest.approx(report["engines"][name]["median_ms"] / limit["limit_ms"])
        assert report["speedup"][name] == pytest.approx(limit["speedup_at_limit"][name] * limit["fraction"])
    assert report["sizes"]["bnn_tvm_module_bytes"] > 0
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "bnn_tvm" in printed and "popcount limit" in printed and "would be at most" in printed

    table = subprocess.run([sys.executable, "tools/perf_table.py", str(out_json)], capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    assert "| `conv3x3:32x8x8` | x86 | 1 |" in table.stdout
    assert report["machine"]["cpu"] in table.stdout


def test_bench_bare_onnx_file_with_a_subset_of_engines(tmp_path):
    """MODEL as a bare ONNX file (the bundled default) with a subset of engines: PyTorch runs the
    ONNX graph itself, and its output is checked against ONNX Runtime like TVM's."""
    from bnn_tvm.frontend.export import default_model_path

    out_json = tmp_path / "bench.json"
    assert main(["bench", default_model_path(), "--engines", "bnn_tvm,torch_fp32", "--repeat", "3", "--json", str(out_json)]) == 0
    report = json.loads(out_json.read_text())
    assert report["engines"]["bnn_tvm"]["median_ms"] > 0
    assert report["engines"]["torch_fp32"]["median_ms"] > 0, report["engines"]["torch_fp32"]
    assert "bnn_tvm.measure.onnx_torch" in report["engines"]["torch_fp32"]["note"]
    assert report["max_abs_diff_vs_reference"]["torch_fp32"] < 1e-4
    assert report["speedup"]["torch_fp32"] > 0
    assert "topi_bitserial" not in report["engines"]


def test_tvm_fp32_is_the_float_graph_through_compile_onnx():
    """``tvm_fp32`` is ``compile_onnx(binarize=False)``: the imported graph with no binary
    kernel, nothing fused, no ``Sign(0)`` convention, and the options of the binary kernels refused."""
    from bnn_tvm import schedules
    from bnn_tvm.compilation.compiler import compile_onnx, lower_onnx
    from bnn_tvm.frontend.export import default_model_path

    path = default_model_path()
    assert list(schedules.bnn_kernels(lower_onnx(path).mod))  # the default model has binary layers...
    assert not list(schedules.bnn_kernels(lower_onnx(path, binarize=False).mod))  # ...left float here
    compiled = compile_onnx(path, binarize=False)
    assert compiled.metadata["fused"] == [] and "sign_zero" not in compiled.metadata and compiled.logs == []
    for options in ({"db": "records"}, {"standalone": True}, {"sign_zero": "plus"}):
        with pytest.raises(BnnError, match="binarize=False"):
            compile_onnx(path, binarize=False, **options)


def test_bench_model_with_a_token_input(tmp_path):
    """A model whose input is ``[N, T, C]`` (binary matmuls on tokens): PyTorch has no
    channels_last layout for it, so its one layout is timed, not an error."""
    from onnx import helper
    from onnx_builders import GraphBuilder, save

    g = GraphBuilder([1, 6, 40], seed=3)
    g.input = helper.make_tensor_value_info("x", 1, [1, 6, 40])
    out = g.node("MatMul", [g.binarize("x"), g.const(g.binary_weight((40, 8)), "w")])
    path = save(g.model([out]), tmp_path / "tokens.onnx")
    out_json = tmp_path / "bench.json"
    assert main(["bench", path, "--engines", "bnn_tvm,torch_fp32", "--repeat", "3", "--json", str(out_json)]) == 0
    report = json.loads(out_json.read_text())
    assert report["engines"]["torch_fp32"]["median_ms"] > 0, report["engines"]["torch_fp32"]
    assert "best layout NCHW" in report["engines"]["torch_fp32"]["note"]
    assert report["max_abs_diff_vs_reference"]["bnn_tvm"] == 0


def test_bench_rejects_bad_options(capsys):
    assert main(["bench", "--layer", "conv3x3:8x4x4", "--engines", "bnn_tvm,tensorflow"]) == 2
    assert "tensorflow" in capsys.readouterr().err
    assert main(["bench", "--layer", "conv3x3:8x4x4", "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err
    assert main(["bench", "--layer", "conv3x3:8x4x4", "--target", "rasp3b"]) == 2
    assert "--rpc" in capsys.readouterr().err


@pytest.mark.parametrize("threads, pauses", [(1, 0), (2, 6)])
def test_samples_wait_for_idle_thread_pools_with_several_threads(monkeypatch, threads, pauses):
    """With several threads each sample starts after a pause (the previous engine's spinning
    worker threads would share the cores with it); with one thread, no time is spent waiting."""
    from bnn_tvm.measure.bench import run
    from bnn_tvm.measure.bench.run import measure_rounds
    from bnn_tvm.measure.bench.workload import EngineResult, PAUSE_S, Prepared, Settings

    slept = []
    monkeypatch.setattr(run.time, "sleep", slept.append)
    prepared = {name: Prepared(EngineResult(name), lambda: 1.0) for name in ("bnn_tvm", "ort_fp32")}
    measure_rounds(prepared, Settings(threads=threads, repeat=3))
    assert slept == [PAUSE_S] * pauses
    assert all(p.result.times_ms == [1.0] * 3 for p in prepared.values())


def test_popcount_limit_counts_as_the_kernels_do():
    """The limit is measured on the loop the conv kernels run: byte counters on AVX2 (which
    beat the 32-bit-counter loop there), 32-bit counters on a unit with a vector popcount."""
    from bnn_tvm.measure.bench.limit import popcount_peak

    peak = popcount_peak("x86-avx2", 1)
    assert "byte counters" in peak["method"] and peak["gmacs_per_s"] > 0


def test_bench_qonnx_model_runs_the_expanded_graph_in_every_engine(tmp_path):
    """A QONNX ``BipolarQuant`` model: ONNX Runtime and PyTorch cannot run the QONNX op, so
    they (and the reference) run its standard-ONNX expansion, as the compiler reads it."""
    from onnx import helper
    from onnx_builders import GraphBuilder, save

    g = GraphBuilder([1, 8, 6, 6], seed=4)
    domain = "qonnx.custom_op.general"
    bits = g.name("bq")
    g.nodes.append(helper.make_node("BipolarQuant", ["x", g.const(np.float32(1))], [bits], name="quant", domain=domain))
    out = g.conv(bits, g.binary_weight((4, 8, 3, 3)), pad=1)
    model = g.model([out])
    model.opset_import.append(helper.make_opsetid(domain, 1))
    path = save(model, tmp_path / "qonnx.onnx")
    out_json = tmp_path / "bench.json"
    assert main(["bench", path, "--engines", "bnn_tvm,ort_fp32,torch_fp32", "--repeat", "2", "--json", str(out_json)]) == 0
    report = json.loads(out_json.read_text())
    for engine in ("bnn_tvm", "ort_fp32", "torch_fp32"):
        assert report["engines"][engine]["median_ms"] > 0, report["engines"][engine]
    assert report["max_abs_diff_vs_reference"]["bnn_tvm"] == 0
