"""The CUDA target's compile path, and the GPU runs where a GPU is present.

Without a GPU (CI, most machines): the default model and small binary graphs compile for
``cuda`` through the compiler's schedule hook (``schedules.schedule_module`` -> ``schedules.cuda``); the generated CUDA source uses ``__popc`` on 32-bit words with shared-memory
staging; nvcc turns it into PTX (skipped, with the reason, when no CUDA toolkit is installed);
``compile --target cuda`` writes a deployable library; and every kernel's CUDA schedule, replayed
on the CPU without its thread bindings (``schedules.cuda.emulate``), computes exactly what the
unscheduled compute does. The run-on-GPU tests skip, saying why, when ``tvm.cuda(0)`` does not
exist.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import random_arguments, run_on_cpu
from onnx_builders import (
    GraphBuilder,
    conv_block_model,
    dilated_conv_graph,
    grouped_conv_graph,
    pooled_threshold_graph,
    quant_planes_graph,
    save,
    sign_chain_graph,
    ternary_sign_graph,
    ttq_graph,
)
from random_graphs import GENERATORS
from tvm import tirx

from bnn_tvm import schedules
from bnn_tvm import targets
from bnn_tvm.cli import main
from bnn_tvm.compilation.compiler import compile_onnx, lower_onnx
from bnn_tvm.errors import BnnError
from bnn_tvm.frontend.export import default_model_path
from bnn_tvm.schedules import cuda


def gpu_present() -> bool:
    import tvm

    return tvm.cuda(0).exist


NO_GPU = "no CUDA GPU here (tvm.cuda(0).exist is False): the run tests need an NVIDIA GPU and driver"
NO_NVCC = "no CUDA toolkit here (no nvcc on PATH, in $CUDA_PATH or in /usr/local/cuda): PTX needs nvcc"
needs_gpu = pytest.mark.skipif(not gpu_present(), reason=NO_GPU)
needs_nvcc = pytest.mark.skipif(cuda.cuda_root() is None, reason=NO_NVCC)


@pytest.fixture(scope="module")
def digits_cuda():
    return compile_onnx(default_model_path(), "cuda")


@pytest.fixture(scope="module")
def digits_source(digits_cuda):
    return cuda.cuda_source(digits_cuda.executable)


def kernel_names(source: str) -> list[str]:
    """Names of the ``__global__`` kernels defined in a CUDA source."""
    names = []
    for line in source.splitlines():
        if line.startswith('extern "C" __global__') and line.rstrip().endswith("{"):
            names.append(line.split("(")[0].split()[-1])
    return names


# --------------------------------------------------------------------------------------------
# Without a GPU: source, PTX, library


def test_default_model_compiles_to_cuda_with_popcount_kernels(digits_cuda, digits_source):
    plans = {}  # what the compiler's hook did with each binary kernel for the cuda target
    lowered = lower_onnx(default_model_path())
    schedules.schedule_module(lowered.mod, targets.get("cuda"), plans)
    ops = {str(f.attrs["bnn.op"]) for _, f, _ in schedules.bnn_kernels(lowered.mod)}
    assert {"pack_sign", "binary_conv2d_threshold"} <= ops
    assert set(plans) == {gv.name_hint for gv, _, _ in schedules.bnn_kernels(lowered.mod)}
    assert any("32 counters per thread" in plan for plan in plans.values()), plans

    assert "__popc(" in digits_source and "__popcll" not in digits_source  # 32-bit words
    # the binary convs stage their weights and padded input words in shared memory
    assert "__shared__" in digits_source and "pad_bits_shared" in digits_source
    assert "__syncthreads()" in digits_source
    # float operators (the first conv, batch norms) went through dlight's GPU rules: every
    # kernel of the module has its threads bound, or tvm.compile would have refused it
    assert len(kernel_names(digits_source)) >= len(plans) + 2
    assert digits_cuda.metadata["target"] == "cuda"


@needs_nvcc
def test_cuda_source_compiles_to_ptx_with_nvcc(digits_source):
    ptx = cuda.compile_ptx(digits_source, "sm_80")
    assert ".target sm_80" in ptx
    entries = [line for line in ptx.splitlines() if ".entry" in line]
    assert len(entries) == len(kernel_names(digits_source))
    assert "popc.b32" in ptx


TINY_KERNEL = 'extern "C" __global__ void count(unsigned* a) { a[threadIdx.x] = __popc(a[threadIdx.x]); }'


@needs_nvcc
def test_nvcc_builds_without_fast_math(monkeypatch, tmp_path):
    """TVM passes ``--use_fast_math`` unless its variable is set; ours is set for each build."""
    monkeypatch.setattr(cuda, "cuda_root", lambda: str(tmp_path))
    monkeypatch.delenv(cuda.NO_FAST_MATH, raising=False)
    with cuda.toolkit_environment():
        assert os.environ[cuda.NO_FAST_MATH] == "1"
    assert cuda.NO_FAST_MATH not in os.environ


def test_ptx_for_another_arch_and_nvcc_errors_surface():
    assert ".target sm_75" in cuda.compile_ptx(TINY_KERNEL, "sm_75")
    with pytest.raises(RuntimeError, match="__popc_missing"):
        cuda.compile_ptx(TINY_KERNEL.replace("__popc(", "__popc_missing("), "sm_80")


def test_compile_command_writes_a_cuda_library(tmp_path):
    out = tmp_path / "digits_cuda.so"
    assert main(["compile", "--target", "cuda", "--arch", "sm_80", "-o", str(out)]) == 0
    data = out.read_bytes()
    assert data[:4] == b"\x7fELF"
    from bnn_tvm.compilation.runtime import CompiledRunner

    if gpu_present():
        # on a GPU host nvcc builds the device code at compile time: sm_80 machine code plus its
        # PTX, which the driver JIT-compiles for a newer GPU; the library must load and run here
        runner = CompiledRunner.load(str(out))
        assert runner.device.dlpack_device_type() == 2  # kDLCUDA
        assert runner.run(np.zeros((3, *runner.input_shape[1:]), np.float32))[0].shape[0] == 3
    else:
        # without a GPU the device code travels as CUDA source, compiled when loaded on the GPU host
        assert b"__popc(" in data and b"cuda" in data
        with pytest.raises(BnnError, match="holds CUDA kernels.*NVIDIA GPU"):
            CompiledRunner.load(str(out))


def torch_style_names(model):
    """Nodes and tensors named as ``torch.onnx.export`` names them: ``/3/Conv``,
    ``/3/Conv_output_0`` (not C identifiers)."""
    renamed = {}
    for k, node in enumerate(model.graph.node):
        node.name = f"/{k}/{node.op_type}"
        for j, out in enumerate(node.output):
            renamed[out] = f"{node.name}_output_{j}"
            node.output[j] = renamed[out]
        for j, name in enumerate(node.input):
            node.input[j] = renamed.get(name, name)
    for out in model.graph.output:
        out.name = renamed.get(out.name, out.name)
    return model


def test_kernel_parameters_are_c_identifiers_whatever_the_onnx_names(tmp_path):
    """PyTorch's names (``/2/Clip``) name Relax variables, and those the kernels' parameters:
    nvcc refused ``input_/2/Clip_ptr`` (BinaryNet's export, the whole CUDA source)."""
    import re

    model, _ = conv_block_model(16, 24, 6, 1, 1, seed=3)
    path = save(torch_style_names(model), tmp_path / "torch_names.onnx")
    source = cuda.cuda_source(compile_onnx(path, "cuda").executable)
    parameters = re.findall(r"__restrict__ ([^,)]+)", source)
    assert parameters and all(re.fullmatch(r"\w+", p) for p in parameters), sorted(set(parameters))


def test_cuda_root_is_found_through_the_nvcc_wrapper():
    root = cuda.cuda_root()
    if root is None:
        pytest.skip(NO_NVCC)
    assert os.path.isfile(os.path.join(root, "bin", "nvcc"))
    assert os.path.isdir(os.path.join(root, "include"))


def test_device_code_embeds_ptx_for_newer_gpus():
    assert cuda.device_code_arch("sm_86") == ["-gencode", "arch=compute_86,code=[sm_86,compute_86]"]


# --------------------------------------------------------------------------------------------
# Without a GPU: the schedules, replayed on the CPU, against the unscheduled computes


def dorefa(g, x, bits):
    """DoReFa's k-bit activation, Round(Clip(x, 0, 1) * L) / L: packed bit planes."""
    levels = np.float32((1 << bits) - 1)
    clipped = g.node("Clip", [x, g.const(np.float32(0)), g.const(np.float32(1))])
    return g.node("Div", [g.node("Round", [g.node("Mul", [clipped, g.const(levels)])]), g.const(levels)])


def binary_graphs(tmp_path):
    """Small graphs covering every kernel form: name -> (path, batch)."""
    graphs = {}
    # 24 channels (a clamped last word), 13x13 (a row tail per block), a float conv output
    model, _ = conv_block_model(16, 24, 13, 1, 1, seed=1)
    graphs["padded_clamped_tail"] = (save(model, tmp_path / "a.onnx"), 1)
    # 33 input channels (2 words), stride 2, unpadded first conv, batch 2
    model, _ = conv_block_model(33, 64, 11, 2, 0, seed=2)
    graphs["stride2_unpadded_batch2"] = (save(model, tmp_path / "b.onnx"), 2)
    g = GraphBuilder([1, 40, 8, 8], seed=3)
    y = g.batch_norm(g.conv(g.binarize("x"), g.binary_weight((33, 40, 3, 3)), pad=1), *g.random_bn(33))
    pooled = g.node("MaxPool", [g.binarize(y)], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    out = g.conv(pooled, g.binary_weight((6, 33, 3, 3)), pad=1)
    graphs["maxpool"] = (save(g.model([out]), tmp_path / "d.onnx"), 1)
    g = GraphBuilder([1, 20, 4, 4], seed=11)
    flat = g.node("Flatten", [g.binarize("x")], axis=1)
    hidden = g.batch_norm(g.node("MatMul", [flat, g.const(g.binary_weight((320, 70)), "w")]), *g.random_bn(70))
    out = g.batch_norm(g.node("MatMul", [g.binarize(hidden), g.const(g.binary_weight((70, 9)), "w")]), *g.random_bn(9))
    graphs["dense_batch3"] = (save(g.model([out]), tmp_path / "e.onnx"), 3)
    g = GraphBuilder([1, 10, 6, 6], seed=22)
    a = dorefa(g, "x", 2)
    y = g.batch_norm(g.conv(a, g.binary_weight((12, 10, 3, 3)), pad=1), *g.random_bn(12, 0.3))
    out = g.conv(dorefa(g, g.conv(g.binarize(y), g.binary_weight((6, 12, 3, 3)), pad=1), 2), g.binary_weight((3, 6, 1, 1)))
    graphs["dorefa_planes"] = (save(g.model([out, a]), tmp_path / "f.onnx"), 1)
    graphs["dilated"] = (save(dilated_conv_graph(), tmp_path / "g.onnx"), 1)
    # max pool between conv and BN: an OR/AND pool of thresholded bits (a flip mask)
    graphs["pooled_threshold"] = (save(pooled_threshold_graph(), tmp_path / "h.onnx"), 1)
    # one binary conv per group, the groups sliced and concatenated by generic ops
    graphs["grouped"] = (save(grouped_conv_graph(), tmp_path / "i.onnx"), 2)
    # Sign that can be 0: convs and a dense over the two bipolar halves b(x), b(-x)
    graphs["ternary_sign"] = (save(ternary_sign_graph(), tmp_path / "j.onnx"), 2)
    # Sign chains as BinaryNet's PyTorch port exports them, and a strict binarizer (0 -> -1)
    graphs["sign_chain_strict"] = (save(sign_chain_graph(), tmp_path / "k.onnx"), 2)
    # a signed 4-bit QONNX Quant as planes (padded with the level of 0), float out and thresholds
    graphs["quant_planes"] = (save(quant_planes_graph(), tmp_path / "l.onnx"), 1)
    # TTQ's {-a, 0, +b} weights: 2 * OC ternary-weight channels, on binarized and ternary inputs
    graphs["ttq"] = (save(ttq_graph(), tmp_path / "m.onnx"), 1)
    return graphs


GRAPHS = ["padded_clamped_tail", "stride2_unpadded_batch2", "maxpool", "dense_batch3", "dorefa_planes", "dilated",
          "pooled_threshold", "grouped", "ternary_sign", "sign_chain_strict", "quant_planes", "ttq"]
# the OR max pool is a one-thread-per-word kernel like pack_sign: replayed in the slow run only
SLOW_EMULATION = {"maxpool"}


def check_emulated_kernels(path, batch, rng):
    checked = []
    for gvar, func, op in schedules.bnn_kernels(lower_onnx(path, batch=batch, target="cuda").mod):
        arrays = random_arguments(func, rng)
        expected = run_on_cpu(func, arrays)
        got = run_on_cpu(cuda.emulate(func, op), arrays)
        assert np.array_equal(expected, got), f"{gvar.name_hint} ({op}): the CUDA schedule changes the result"
        assert len(np.unique(expected)) > 1, f"{gvar.name_hint}: degenerate test data"
        checked.append(op)
    return checked


@pytest.mark.parametrize(
    "graph", [pytest.param(g, marks=pytest.mark.slow) if g in SLOW_EMULATION else g for g in GRAPHS]
)
def test_cuda_schedules_compute_exactly_what_the_computes_do(tmp_path, graph):
    path, batch = binary_graphs(tmp_path)[graph]
    checked = check_emulated_kernels(path, batch, np.random.default_rng(len(graph)))
    assert any(op.startswith(("binary_", "multibit_")) for op in checked), checked


def emulate_cuda_kernels(mod, spec, plans=None):
    """``schedules.schedule_module`` for :func:`verify_emulated`: every kernel replaced by its
    CUDA schedule's CPU replay; float operators left to the CPU build's defaults."""
    for gvar, func, op in list(schedules.bnn_kernels(mod)):
        mod[gvar] = cuda.emulate(func, op)
    return mod


def verify_emulated(monkeypatch, path, x, batch=None):
    """``verify``, of the module ``compile --target cuda`` builds (its passes: lookup tables,
    not float epilogues), with every kernel's CUDA schedule replayed on the CPU: the whole
    graph is checked against ONNX Runtime without a GPU (only thread semantics are not)."""
    from bnn_tvm.compilation import compiler
    from bnn_tvm.compilation import verify as verify_module

    def lower_for_cuda(path, batch=None, extra_outputs=None, target="x86", sign_zero="exact", binarize=True):
        return real_lower(path, batch, extra_outputs, "cuda", sign_zero, binarize)

    real_lower = compiler.lower_onnx
    monkeypatch.setattr(compiler, "lower_onnx", lower_for_cuda)
    monkeypatch.setattr(verify_module, "lower_onnx", lower_for_cuda)
    monkeypatch.setattr(schedules, "schedule_module", emulate_cuda_kernels)
    return verify_module.verify(path, "x86", x=x, batch=batch)


@pytest.mark.parametrize("graph", GRAPHS)
def test_cuda_build_of_binary_graphs_is_exact_when_emulated(tmp_path, monkeypatch, graph):
    path, batch = binary_graphs(tmp_path)[graph]
    x = np.random.default_rng(1).standard_normal((4, *lower_onnx(path, batch).input_shape[1:])).astype(np.float32)
    if graph == "dorefa_planes":
        x = x * 0.6 + 0.5
    if graph in ("sign_chain_strict", "ttq"):
        x[:, :, ::3] = 0.0
    report = verify_emulated(monkeypatch, path, x, batch)
    assert report.ok, "\n".join(report.lines())


@pytest.mark.parametrize("kind,seed", [(kind, seed) for kind in GENERATORS for seed in range(3)])
def test_cuda_build_of_random_graphs_is_exact_when_emulated(tmp_path, monkeypatch, kind, seed):
    model, x = GENERATORS[kind](seed)
    report = verify_emulated(monkeypatch, save(model, tmp_path / "m.onnx"), x)
    assert report.ok, "\n".join(report.lines())


def test_reduction_in_chunks_when_shared_memory_runs_short(tmp_path, monkeypatch):
    monkeypatch.setattr(cuda, "SHARED_BUDGET_BYTES", 1024)
    model, _ = conv_block_model(70, 32, 5, 1, 1, seed=5)  # 3 channel words, chunks of 1
    lowered = lower_onnx(save(model, tmp_path / "m.onnx"))
    _, func, op = next(k for k in schedules.bnn_kernels(lowered.mod) if k[2] == "binary_conv2d_threshold")
    scheduled = cuda.schedule(func, op)
    assert "3 chunk(s) of 1 word(s)" in scheduled.plan
    arrays = random_arguments(func, np.random.default_rng(5))
    assert np.array_equal(run_on_cpu(func, arrays), run_on_cpu(cuda.emulate(func, op), arrays))


def test_float_pools_get_a_thread_per_output(tmp_path):
    """Average pools (a sum, then a division) and the global mean get ``per_output``, replayed
    exactly on the CPU; the float convs around them stay with dlight."""
    g = GraphBuilder([2, 16, 8, 8], seed=4)
    y = g.conv(g.binarize("x"), g.binary_weight((24, 16, 3, 3)), pad=1)
    pooled = g.node("AveragePool", [y], kernel_shape=[2, 2], strides=[2, 2])
    padded = g.node("AveragePool", [pooled], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    out = g.node("GlobalAveragePool", [g.conv(padded, np.ones((5, 24, 1, 1), np.float32))])
    lowered = lower_onnx(save(g.model([out]), tmp_path / "pools.onnx"), batch=2)
    spec = targets.get("cuda")
    legalized = schedules.legalize(lowered.mod, spec.tvm_target())
    windows = {gvar.name_hint: func for gvar, func in legalized.functions_items()
               if isinstance(func, tirx.PrimFunc) and "bnn.op" not in func.attrs and cuda.is_window_reduction(func)}
    assert sorted(windows) == ["avg_pool2d", "avg_pool2d1", "mean"], sorted(windows)
    rng = np.random.default_rng(4)
    for name, func in windows.items():
        arrays = [rng.standard_normal([int(d) for d in p.shape]).astype(np.float32) for p in func.params]
        np.testing.assert_array_equal(run_on_cpu(cuda.emulate(func, name), arrays), run_on_cpu(func, arrays), err_msg=name)
    plans = {}
    schedules.schedule_module(lowered.mod, spec, plans)
    assert all("one thread per output" in plans[name] for name in windows), plans
    assert not any(name.startswith(("conv2d", "fused_conv2d")) for name in plans), plans


def test_schedule_is_the_family_entry_point():
    """``schedules.schedule_module`` calls ``schedule(func, op, target)`` per kernel and needs
    ``func``, ``plan`` and ``relayouts`` back; scheduled kernels must be left alone by dlight."""
    assert schedules.family_module("cuda") is cuda
    lowered = lower_onnx(default_model_path())
    _, func, op = next(iter(schedules.bnn_kernels(lowered.mod)))
    result = cuda.schedule(func, op, targets.get("cuda", arch="sm_86").tvm_target())
    assert result.relayouts == {} and result.plan
    assert bool(result.func.attrs["tirx.is_scheduled"])
    assert int(result.func.attrs["op_pattern"]) == cuda.OPAQUE_PATTERN  # never fused
    assert str(result.func.attrs["bnn.op"]) == op
    # the whole-module form schedules every kernel in place and leaves the float functions
    plans = {}
    scheduled = cuda.schedule_cuda(lowered.mod, targets.get("cuda"), plans)
    kernels = list(schedules.bnn_kernels(scheduled))
    assert len(plans) == len(kernels) == len(list(schedules.bnn_kernels(lowered.mod)))
    assert all(bool(f.attrs["tirx.is_scheduled"]) for _, f, _ in kernels)
    assert len(scheduled.functions_items()) == len(lowered.mod.functions_items())


# --------------------------------------------------------------------------------------------
# With a GPU: exactness on the device


@needs_gpu
def test_default_model_verifies_exactly_on_the_gpu():
    from bnn_tvm.compilation.verify import verify

    report = verify(default_model_path(), "cuda")
    assert report.ok, "\n".join(report.lines())
    assert report.binary_checked >= 1


@needs_gpu
@pytest.mark.parametrize("graph", GRAPHS)
def test_binary_graphs_verify_exactly_on_the_gpu(tmp_path, graph):
    from bnn_tvm.compilation.verify import verify

    path, batch = binary_graphs(tmp_path)[graph]
    x = np.random.default_rng(1).standard_normal((5, *lower_onnx(path, batch).input_shape[1:])).astype(np.float32)
    if graph == "dorefa_planes":
        x = x * 0.6 + 0.5
    if graph in ("sign_chain_strict", "ttq"):
        x[:, :, ::3] = 0.0  # Sign(0) = 0 on the input: its halves must both see it
    report = verify(path, "cuda", x=x.astype(np.float32), batch=batch)
    assert report.ok, "\n".join(report.lines())


@needs_gpu
@pytest.mark.parametrize("kind,seed", [(kind, seed) for kind in GENERATORS for seed in range(4)])
def test_random_graphs_verify_exactly_on_the_gpu(tmp_path, kind, seed):
    """The random sweeps' combinations (``random_graphs.py``), on the device: every kernel
    form meets the others there too."""
    from bnn_tvm.compilation.verify import verify

    model, x = GENERATORS[kind](seed)
    report = verify(save(model, tmp_path / "m.onnx"), "cuda", x=x)
    assert report.ok, "\n".join(report.lines())
    assert any("-> binary_" in line for line in report.fused), report.fused


@needs_gpu
@pytest.mark.parametrize("graph", GRAPHS)
def test_each_kernel_on_the_gpu_computes_exactly_what_its_compute_does(tmp_path, graph):
    """Every kernel alone, built for the GPU, on random words against its unscheduled compute
    on the CPU: bit for bit, float outputs too (a k-bit conv's ``d / 3`` was one ulp off under
    nvcc's fast math). Lookup tables are left out: random words reach sums outside a table."""
    import tvm

    path, batch = binary_graphs(tmp_path)[graph]
    spec = targets.get("cuda")
    rng = np.random.default_rng(len(graph))
    for gvar, func, op in schedules.bnn_kernels(lower_onnx(path, batch=batch, target="cuda").mod):
        if op.endswith("_table"):
            continue
        arrays = random_arguments(func, rng)
        scheduled = cuda.schedule(func, op, spec.tvm_target()).func.with_attr("global_symbol", "main")
        built = tvm.compile(tvm.IRModule({"main": scheduled}), spec.tvm_target())
        tensors = [tvm.runtime.tensor(a.copy(), tvm.cuda(0)) for a in arrays]
        built(*tensors)
        assert np.array_equal(tensors[-1].numpy(), run_on_cpu(func, arrays)), f"{gvar.name_hint} ({op}) on the GPU"


@needs_gpu
def test_exported_library_loads_and_runs_on_the_gpu(tmp_path):
    from bnn_tvm.training.data import digits_split
    from bnn_tvm.compilation.runtime import CompiledRunner

    out = tmp_path / "digits_cuda.so"
    assert main(["compile", "--target", "cuda", "-o", str(out)]) == 0
    reference = compile_onnx(default_model_path(), "x86")
    _, _, x_test, _ = digits_split()
    on_gpu = CompiledRunner.load(str(out))
    assert on_gpu.device.dlpack_device_type() == 2  # kDLCUDA
    ours = on_gpu.run(x_test[:19])[0]
    theirs = CompiledRunner(reference.executable).run(x_test[:19])[0]
    assert np.max(np.abs(ours - theirs)) <= 1e-5 * np.max(np.abs(theirs))


# --------------------------------------------------------------------------------------------
# bench and verify on the GPU


@pytest.mark.skipif(gpu_present(), reason="checks the message given where no GPU is")
def test_bench_on_cuda_without_a_gpu_says_so(capsys):
    assert main(["bench", "--layer", "conv3x3:8x4x4", "--target", "cuda"]) == 2
    assert "needs an NVIDIA GPU" in capsys.readouterr().err


@needs_gpu
def test_bench_layer_on_the_gpu(tmp_path, capsys):
    """The binary layer, TVM's float build and PyTorch's cuDNN conv, all on the GPU; topi's
    bitserial conv is a CPU baseline and says so."""
    import json

    out_json = tmp_path / "bench.json"
    layer = "conv3x3:32x8x8,batch=2"
    assert main(["bench", "--layer", layer, "--target", "cuda", "--repeat", "3", "--json", str(out_json)]) == 0
    report = json.loads(out_json.read_text())
    assert report["target"] == "cuda" and "gpu" in report["machine"]
    for name in ("bnn_tvm", "tvm_fp32", "torch_fp32"):
        assert report["engines"][name]["median_ms"] > 0, report["engines"][name]
    assert "cuDNN" in report["engines"]["torch_fp32"]["note"]
    assert "CPU baseline" in report["engines"]["topi_bitserial"]["error"]
    assert report["max_abs_diff_vs_reference"] == {"bnn_tvm": 0.0, "tvm_fp32": 0.0}  # integer results: exact
    assert report["machine"]["gpu"].split(" (")[0] in capsys.readouterr().out


@needs_gpu
def test_verify_zoo_model_on_the_gpu(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BNN_TVM_CACHE", str(tmp_path))
    assert main(["verify", "resnet20", "--target", "cuda"]) == 0
    assert "VERIFY OK" in capsys.readouterr().out
