"""The engines: each prepares a workload and returns how to time it."""

from __future__ import annotations

import os
import statistics

import numpy as np

from ...errors import BnnError
from .workload import EngineResult, Prepared, Settings, calls_per_sample, python_sampler, tvm_sampler
from ...devices.remote import remote_bench, remote_ort_bench
from bnn_tvm import targets
from bnn_tvm.targets import mca


ENGINES = ("bnn_tvm", "tvm_fp32", "torch_fp32", "ort_fp32", "topi_bitserial")


def run_compiled(engine: str, compiled, x: np.ndarray, settings: Settings, workdir: str, outputs: dict) -> Prepared:
    """Export a compiled model and prepare its timing here, or time it on the board over RPC."""
    path = os.path.join(workdir, f"{engine}.so")
    compiled.export(path)
    result = EngineResult(engine, note=f"module {os.path.getsize(path) / 1024:.0f} KiB")
    if settings.remote:
        remote = remote_bench(path, settings.target, x, settings.endpoint, repeat=settings.repeat,
                              count_instructions=settings.count_instructions)
        result.times_ms = [float(remote["median_ms"])]
        result.instructions = remote.get("instructions")
        result.note += ", timed on the board (median of its runs)"
        outputs[engine] = remote["outputs"][0]
        return Prepared(result)
    from ...compilation.runtime import CompiledRunner

    runner = CompiledRunner.load(path)  # on the GPU for CUDA modules
    outputs[engine] = runner.run(x)[0]
    vm, device = runner.vm, runner.device
    name, args = runner.timed_call(x)  # the call `run` makes: on the static workspaces where the module has them
    number = calls_per_sample(lambda: (vm[name](*args), device.sync()))
    timer = vm.time_evaluator(name, device, number=number, repeat=1)

    def sample() -> float:
        vm[name](*args)  # each sample starts warm, whatever ran before it in the round
        return timer(*args).results[0] * 1e3

    return Prepared(result, sample)


def bnn_engine(workload, x, settings, workdir, outputs) -> Prepared:
    from ...compilation.compiler import compile_onnx

    compiled = compile_onnx(workload.onnx_path, settings.target, batch=workload.input_shape[0], db=settings.db,
                            sign_zero=settings.sign_zero)
    estimates = mca_estimates(compiled, settings)
    prepared = run_compiled("bnn_tvm", compiled, x, settings, workdir, outputs)
    prepared.result.mca = estimates
    prepared.result.note += f", {len(compiled.metadata.get('fused', []))} fusions"
    if settings.sign_zero != "exact":
        prepared.result.note += f", --sign-zero {settings.sign_zero}"
    if settings.db:
        prepared.result.note += f", tuning records from {settings.db}"
    return prepared


def wants_mca(settings: Settings) -> bool:
    """Instruction counts come with llvm-mca's cycle estimates on ARM targets: a count weighs
    every instruction alike, the in-order Cortex-A53 does not."""
    return settings.count_instructions and targets.get(settings.target).family == "arm"


def mca_estimates(compiled, settings: Settings) -> dict | None:
    """The estimates of ``compiled``'s kernels (computed here, from its assembly), or None. A
    CPU that llvm-mca has no model for is reported in the result, not raised: the board's
    instruction count still comes."""
    if not wants_mca(settings):
        return None

    try:
        return mca.kernel_estimates(compiled.executable, targets.get(settings.target))
    except BnnError as err:
        mca.llvm_mca()  # a missing llvm-mca is the user's to fix: raise that one
        return {"error": str(err)}


def tvm_fp32_engine(workload, x, settings, workdir, outputs) -> Prepared:
    from ...compilation.compiler import compile_onnx

    compiled = compile_onnx(workload.onnx_path, settings.target, batch=workload.input_shape[0], binarize=False)
    prepared = run_compiled("tvm_fp32", compiled, x, settings, workdir, outputs)
    prepared.result.note += ", untuned TVM default lowering"
    return prepared


def torch_engine(workload, x, settings, workdir, outputs) -> Prepared:
    """The float twin in PyTorch; the faster of NCHW and channels_last (decided on 3 samples; a
    model whose input is not 4-D has one layout).
    On a CUDA target: on the GPU with cuDNN, strict fp32 (TF32 off: the baseline is named fp32)
    and ``cudnn.benchmark`` (cuDNN's fastest algorithm per shape); each call waits for the GPU."""
    import torch

    if workload.torch_twin is None:
        return Prepared(EngineResult("torch_fp32", error=workload.torch_note))
    torch.set_num_threads(settings.threads)
    on_gpu = on_cuda(settings)
    if on_gpu:
        if not torch.cuda.is_available():
            return Prepared(EngineResult("torch_fp32", error=f"this PyTorch ({torch.__version__}) sees no CUDA GPU"))
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    device = torch.device("cuda" if on_gpu else "cpu")
    wait = torch.cuda.synchronize if on_gpu else None
    model = workload.torch_twin().to(device)
    candidates = []
    with torch.inference_mode():
        if workload.torch_same_graph:
            result = model(torch.from_numpy(x).to(device))
            outputs["torch_fp32"] = (result[0] if isinstance(result, tuple) else result).cpu().numpy()
        layouts = [("NCHW", torch.contiguous_format)] + ([("channels_last", torch.channels_last)] if x.ndim == 4 else [])
        for layout, fmt in layouts:  # channels_last exists for 4-D inputs only
            module = model.to(memory_format=fmt)
            data = torch.from_numpy(x).to(device).contiguous(memory_format=fmt)
            sample = python_sampler(lambda module=module, data=data: module(data), wait)
            candidates.append((statistics.median(sample() for _ in range(3)), layout, sample, module))
    _, layout, sample, module = min(candidates, key=lambda c: c[0])

    def timed() -> float:
        with torch.inference_mode():
            return sample()

    where = f"cuDNN on {torch.cuda.get_device_name()}, TF32 off" if on_gpu else "CPU"
    return Prepared(EngineResult("torch_fp32", note=f"{workload.torch_note}; {where}; best layout {layout}"), timed)


def ort_on_board(settings: Settings) -> bool:
    """Whether ``ort_fp32`` runs on the board: remote runs on aarch64 targets, whose emulated
    board has ONNX Runtime's aarch64 build (``bnn_tvm.devices.board``)."""
    return settings.remote and targets.get(settings.target).isa == "aarch64"


def ort_board_engine(workload, x, settings, workdir, outputs) -> Prepared:
    """ONNX Runtime's aarch64 build on the board, the same ONNX and options as on x86; timed on
    the board (median of its runs), counted over one ``session.run`` like ``bnn_tvm``'s call."""
    remote = remote_ort_bench(workload.onnx_path, settings.target, x, settings.endpoint, repeat=settings.repeat,
                              count_instructions=settings.count_instructions, threads=settings.threads,
                              budget_s=settings.budget_s)
    note = (f"the same ONNX in ONNX Runtime {remote['ort_version']} (aarch64 build) on the board, all graph "
            f"optimisations, CPUExecutionProvider, timed on the board (median of its {len(remote['times_ms'])} runs)")
    samples = remote.get("instruction_samples")
    if samples:
        note += f"; instructions: median of {len(samples)} counted runs ({min(samples):,}-{max(samples):,})"
    result = EngineResult("ort_fp32", times_ms=[float(remote["median_ms"])], note=note,
                          instructions=remote.get("instructions"), instruction_samples=samples)
    outputs["ort_fp32"] = remote["outputs"][0]
    return Prepared(result)


def ort_engine(workload, x, settings, workdir, outputs) -> Prepared:
    if ort_on_board(settings):
        return ort_board_engine(workload, x, settings, workdir, outputs)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    provider = "CUDAExecutionProvider" if on_cuda(settings) else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        return Prepared(EngineResult("ort_fp32", error=f"this onnxruntime ({ort.__version__}) has no {provider} "
                                     "(the GPU build is the onnxruntime-gpu package)"))
    session = ort.InferenceSession(workload.onnx_path, options, providers=[provider])
    name = session.get_inputs()[0].name
    outputs["ort_fp32"] = session.run(None, {name: x})[0]
    return Prepared(EngineResult("ort_fp32", note=f"the same ONNX, all graph optimisations, {provider}"),
                    python_sampler(lambda: session.run(None, {name: x})))


def topi_engine(workload, x, settings, workdir, outputs) -> Prepared:
    """TVM's shipped ``bitserial_conv2d_nhwc`` (unipolar, int32 output), default lowering: a
    CPU baseline, which TVM has no GPU schedule for."""
    import tvm
    from tvm import te, topi

    if on_cuda(settings):
        return Prepared(EngineResult("topi_bitserial", error="a CPU baseline: TVM ships no CUDA schedule for it"))
    spec = workload.layer
    n, c, h, w = spec.input_shape
    data = te.placeholder((n, h, w, c), "int32", name="data")  # activation bits (0/1)
    kernel = te.placeholder((spec.kernel, spec.kernel, c, spec.out_channels), "int32", name="kernel")
    out = topi.nn.bitserial_conv2d_nhwc(data, kernel, spec.stride, spec.pad, 1, 1, "uint32", "int32", True)
    lib = tvm.compile(tvm.IRModule({"main": te.create_prim_func([data, kernel, out])}), targets.get(settings.target).tvm_target())
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.integers(0, 2, [int(d) for d in t.shape]).astype("int32"), dev) for t in (data, kernel)]
    args.append(tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], "int32"), dev))
    note = "tvm.topi.nn.bitserial_conv2d_nhwc, unipolar, int32 out, weights packed in the kernel, unscheduled (one thread)"
    return Prepared(EngineResult("topi_bitserial", note=note), tvm_sampler(lib.mod, "main", args))


ENGINE_FUNCS = {
    "bnn_tvm": bnn_engine,
    "tvm_fp32": tvm_fp32_engine,
    "torch_fp32": torch_engine,
    "ort_fp32": ort_engine,
    "topi_bitserial": topi_engine,
}
HOST_ONLY = {"torch_fp32", "ort_fp32", "topi_bitserial"}


def on_cuda(settings: Settings) -> bool:
    return targets.get(settings.target).family == "cuda"
