"""Benchmarks: the compiled binary model against the float engines a user would otherwise pick.

One run measures every engine with the same thread count and reports the median of repeated
runs (after warm-up):

* ``bnn_tvm``: the model compiled by this project (binary layers as XNOR-popcount kernels);
* ``tvm_fp32``: the same ONNX compiled by TVM with the binarization passes disabled (the float
  twin's arithmetic: binarizers run as float ``Where`` ops, convs as float convs), untuned;
* ``torch_fp32``: PyTorch on the float twin (the same layers with float values), the better of
  NCHW and channels_last memory formats; for a bare ONNX file, which has no PyTorch model behind
  it, the ONNX graph itself run node by node in PyTorch (``bnn_tvm.measure.onnx_torch``, the same float
  arithmetic as ``tvm_fp32``; its output is checked against the reference like TVM's);
* ``ort_fp32``: ONNX Runtime (all graph optimisations) on the same ONNX as ``tvm_fp32``; with a
  board on an aarch64 target (``--rpc``/``--tracker``), ONNX Runtime's aarch64 build on the
  emulated board, timed there and, with ``--count-instructions``, counted by the same plugin over
  one ``session.run`` (the median of 3 such runs: its count varies by up to ~1.6 %;
  ``instruction_ratio`` in the report: each count over ``bnn_tvm``'s);
* ``topi_bitserial`` (single layers only): TVM's own ``topi.nn.bitserial_conv2d_nhwc``,
  unipolar, int32 output, default (untuned, unscheduled) lowering.

A *layer* (``--layer conv3x3:64x56x56``) is a one-conv ONNX model built with ``onnx.helper``:
``Where(x >= 0, 1, -1)`` then a ``Conv`` with ±1 weights and zero padding; its float twin (for
PyTorch) is the conv alone.

The popcount limit: binary multiply-accumulates per second that one core's vector unit can do
when it does nothing but ``XOR + POPCOUNT + ADD`` on data in L1 (``popcount_peak``, measured in
the same run with a kernel of that inner loop and nothing else, times the thread count). The
fraction of it a layer reaches is its binary MACs (``N*OH*OW*OC*C*KH*KW``) per second over
that peak. The same peak bounds every ratio of the run: ``speedup_at_limit`` is each engine's
time over the layer's MACs at the limit, the most any popcount kernel could show against it.
"""

from __future__ import annotations

import os
import re
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import BnnError

ENGINES = ("bnn_tvm", "tvm_fp32", "torch_fp32", "ort_fp32", "topi_bitserial")

# The 3x3 binary convolutions of a ResNet-18 at 224x224 (stage entry convs have stride 2).
RESNET18_LAYERS = (
    "conv3x3:64x56x56",
    "conv3x3:64x56x56,out=128,stride=2",
    "conv3x3:128x28x28",
    "conv3x3:128x28x28,out=256,stride=2",
    "conv3x3:256x14x14",
    "conv3x3:256x14x14,out=512,stride=2",
    "conv3x3:512x7x7",
)
LAYER_SYNTAX = "convKxK:CxHxW[,out=OC][,stride=S][,pad=P][,batch=N][,input=binary|ternary][,weights=binary|ternary]"
# input: Where(x >= 0, 1, -1), or Sign(x) with its zeros (torch.sign); weights: ±1, or TWN's
# {-1, 0, +1} (a third of them 0)
LAYER_KINDS = ("binary", "ternary")
PAUSE_S = 0.2  # idle seconds before each sample with several threads (``Settings.pause_s``)


# ------------------------------------------------------------------------------------------
# Single layers


@dataclass(frozen=True)
class LayerSpec:
    """One binary conv layer: binarized input (or ``input="ternary"``: ``Sign(x)``, which is 0
    at 0), ±1 weights (or ``weights="ternary"``: a third of them 0), zero padding."""

    kernel: int
    channels: int
    height: int
    width: int
    out_channels: int
    stride: int = 1
    pad: int = 0
    batch: int = 1
    input: str = "binary"
    weights_kind: str = "binary"

    @classmethod
    def parse(cls, text: str) -> "LayerSpec":
        match = re.fullmatch(r"conv(\d+)x(\d+):(\d+)x(\d+)x(\d+)((?:,\w+=\w+)*)", text.strip())
        if match is None or match.group(1) != match.group(2):
            raise BnnError(f"--layer {text!r}: expected {LAYER_SYNTAX} (e.g. conv3x3:64x56x56)")
        kernel, channels, height, width = (int(match.group(i)) for i in (1, 3, 4, 5))
        options = dict(item.split("=") for item in match.group(6).split(",") if item)
        unknown = set(options) - {"out", "stride", "pad", "batch", "input", "weights"}
        if unknown:
            raise BnnError(f"--layer {text!r}: unknown option(s) {', '.join(sorted(unknown))}; syntax {LAYER_SYNTAX}")
        for key in ("input", "weights"):
            if options.get(key, "binary") not in LAYER_KINDS:
                raise BnnError(f"--layer {text!r}: {key}={options[key]}: expected one of {', '.join(LAYER_KINDS)}")
        numbers = {key: value for key, value in options.items() if key not in ("input", "weights")}
        if not all(value.isdigit() for value in numbers.values()):
            raise BnnError(f"--layer {text!r}: sizes must be positive integers; syntax {LAYER_SYNTAX}")
        spec = cls(
            kernel, channels, height, width,
            out_channels=int(options.get("out", channels)),
            stride=int(options.get("stride", 1)),
            pad=int(options.get("pad", kernel // 2)),
            batch=int(options.get("batch", 1)),
            input=options.get("input", "binary"),
            weights_kind=options.get("weights", "binary"),
        )
        if min(kernel, channels, height, width, spec.out_channels, spec.stride, spec.batch) < 1 or spec.pad < 0:
            raise BnnError(f"--layer {text!r}: sizes must be positive")
        if spec.out_hw[0] < 1 or spec.out_hw[1] < 1:
            raise BnnError(f"--layer {text!r}: the kernel does not fit the padded input")
        return spec

    @property
    def name(self) -> str:
        text = f"conv{self.kernel}x{self.kernel}:{self.channels}x{self.height}x{self.width}"
        extras = [("out", self.out_channels, self.channels), ("stride", self.stride, 1),
                  ("pad", self.pad, self.kernel // 2), ("batch", self.batch, 1), ("input", self.input, "binary"),
                  ("weights", self.weights_kind, "binary")]
        return text + "".join(f",{key}={value}" for key, value, default in extras if value != default)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, self.height, self.width)

    @property
    def out_hw(self) -> tuple[int, int]:
        size = lambda n: (n + 2 * self.pad - self.kernel) // self.stride + 1  # noqa: E731
        return size(self.height), size(self.width)

    @property
    def binary_macs(self) -> int:
        oh, ow = self.out_hw
        return self.batch * oh * ow * self.out_channels * self.channels * self.kernel * self.kernel

    def weights(self, seed: int = 0) -> np.ndarray:
        shape = (self.out_channels, self.channels, self.kernel, self.kernel)
        normal = np.random.default_rng(seed).standard_normal(shape)
        if self.weights_kind == "ternary":  # TWN's threshold: |w| < 0.43 (about a third) -> 0
            return np.where(np.abs(normal) < 0.43, 0.0, np.sign(normal)).astype(np.float32)
        return np.where(normal >= 0, 1.0, -1.0).astype(np.float32)

    def onnx_model(self, binary_input: bool = True, seed: int = 0):
        """The layer as ONNX: ``Where(x >= 0, 1, -1)`` (``Sign(x)`` for a ternary input; nothing
        unless ``binary_input``) + ``Conv``."""
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        inits = [numpy_helper.from_array(self.weights(seed), "w")]
        nodes = []
        conv_input = "x"
        if binary_input and self.input == "ternary":
            nodes.append(helper.make_node("Sign", ["x"], ["x_sign"], name="sign"))
            conv_input = "x_sign"
        elif binary_input:
            inits += [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("zero", 0), ("one", 1), ("minus_one", -1))]
            nodes += [
                helper.make_node("GreaterOrEqual", ["x", "zero"], ["is_positive"], name="binarize_compare"),
                helper.make_node("Where", ["is_positive", "one", "minus_one"], ["x_bin"], name="binarize"),
            ]
            conv_input = "x_bin"
        nodes.append(helper.make_node(
            "Conv", [conv_input, "w"], ["y"], name="conv", kernel_shape=[self.kernel] * 2,
            strides=[self.stride] * 2, pads=[self.pad] * 4,
        ))
        graph = helper.make_graph(
            nodes, "binary_layer",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(self.input_shape))],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [self.batch, self.out_channels, *self.out_hw])],
            initializer=inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 9
        onnx.checker.check_model(model)
        return model

    def torch_float_twin(self, seed: int = 0):
        import torch

        conv = torch.nn.Conv2d(self.channels, self.out_channels, self.kernel, self.stride, self.pad, bias=False)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(self.weights(seed)))
        return conv.eval()


def parse_layers(texts: list[str]) -> list[LayerSpec]:
    """``--layer`` values: layer specs, or ``resnet18`` for all of ResNet-18's 3x3 binary convs."""
    specs = []
    for text in texts:
        names = RESNET18_LAYERS if text.strip().lower() == "resnet18" else (text,)
        specs += [LayerSpec.parse(name) for name in names]
    return specs


# ------------------------------------------------------------------------------------------
# What is measured


@dataclass
class Workload:
    """One benchmarked model: its ONNX file (binary form) and how to build its float twins."""

    name: str
    onnx_path: str
    input_shape: tuple[int, ...]
    torch_twin: object = None  # () -> torch.nn.Module, the float twin; None: not available
    torch_note: str = ""
    layer: LayerSpec | None = None
    binary_macs: int | None = None
    torch_same_graph: bool = False  # the twin computes the ONNX graph itself: its output is checked


def layer_workload(spec: LayerSpec, workdir: str) -> Workload:
    import onnx

    path = os.path.join(workdir, re.sub(r"[^\w.=-]+", "_", spec.name) + ".onnx")  # one file per layer
    onnx.save(spec.onnx_model(), path)
    return Workload(
        spec.name, path, spec.input_shape, spec.torch_float_twin,
        "float twin: the conv alone on float input, same ±1 weights", spec, spec.binary_macs,
    )


def model_workload(model: str, workdir: str, batch: int) -> Workload:
    """A zoo name, a checkpoint or an ONNX file (``export.resolve_model``). Zoo models are
    benchmarked with their seeded random initial weights (latency does not depend on the
    values), checkpoints with their trained ones; both against their float twins."""
    from ..training import models
    from ..frontend.export import is_checkpoint, resolve_model

    path = resolve_model(model, cache=os.path.join(workdir, "models"))
    if os.path.isfile(model) and not is_checkpoint(model):
        from ..compilation.compiler import input_shape as onnx_input_shape
        from ..frontend.onnx_import import standard_onnx
        from .onnx_torch import module_from_onnx

        path, model = standard_onnx(path, workdir)  # QONNX ops expanded: ONNX Runtime and PyTorch cannot run them
        _, shape = onnx_input_shape(model, path, batch)
        return Workload(os.path.basename(path), path, tuple(shape), lambda: module_from_onnx(path, shape[0]),
                        "the ONNX graph run node by node in PyTorch (bnn_tvm.measure.onnx_torch)", torch_same_graph=True)
    if os.path.isfile(model):
        from ..training.train import load_checkpoint

        _, checkpoint = load_checkpoint(model)
        name, options, label = checkpoint["model"], checkpoint.get("options") or {}, os.path.basename(model)
    else:
        name, options, label = model, {}, model
    return Workload(
        label, path, (batch,) + tuple(models.input_shape(name)),
        lambda: models.build(name, binary=False, **options).eval(),
        f"float twin of {name} (same layers, float activations and weights)",
    )


@dataclass
class EngineResult:
    name: str
    times_ms: list[float] = field(default_factory=list)
    note: str = ""
    error: str | None = None
    instructions: int | None = None
    instruction_samples: list[int] | None = None  # several counted runs, where counts vary (ort_fp32 on a board)
    mca: dict | None = None  # llvm-mca estimates of the kernels' inner loops (``targets.mca``)

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.times_ms) if self.times_ms else None

    def to_json(self) -> dict:
        out = {"median_ms": self.median_ms, "min_ms": min(self.times_ms) if self.times_ms else None,
               "runs": len(self.times_ms), "samples_ms": self.times_ms, "note": self.note}
        if self.error:
            out["error"] = self.error
        if self.instructions is not None:
            out["instructions"] = self.instructions
        if self.instruction_samples:
            out["instruction_samples"] = self.instruction_samples
        if self.mca is not None:
            out["mca"] = self.mca
        return out


@dataclass
class Settings:
    target: str = "x86"
    threads: int = 1
    repeat: int = 20
    budget_s: float = 20.0  # per engine: fewer repeats (at least 3) when an engine is slow
    rpc: str | None = None
    tracker: str | None = None
    key: str | None = None
    count_instructions: bool = False
    db: str | None = None  # tuning records for bnn_tvm (``tune``, ``compile --db``)
    sign_zero: str = "exact"  # Sign(0) for bnn_tvm (relay_passes.conventions.SIGN_ZERO)

    @property
    def remote(self) -> bool:
        return bool(self.rpc or self.tracker or self.key or self.count_instructions)

    @property
    def pause_s(self) -> float:
        """Idle time before each sample when several threads run here. ONNX Runtime's and
        OpenMP's worker threads spin for a while after a run; on a machine with as many cores as
        threads, the next engine then shares a core with them. TVM's kernels split their work
        statically and wait for the slowest thread, so Bi-Real at 2 threads measured 10.7-11.0
        ms instead of 6.6 ms right after ONNX Runtime (4 runs, 2 cores)."""
        return PAUSE_S if self.threads > 1 and not self.remote else 0.0


@dataclass
class Prepared:
    """An engine ready to be timed: ``sample()`` returns one timing sample (ms per call)."""

    result: EngineResult
    sample: object = None  # () -> float; None when the engine was timed elsewhere or failed


def calls_per_sample(run_once) -> int:
    """Warm up; how many calls make a sample of about 10 ms (timer resolution)."""
    start = time.perf_counter()
    run_once()
    first = time.perf_counter() - start
    if first < 0.5:
        run_once()
    return max(1, int(0.01 / max(first, 1e-6)))


def python_sampler(run_once, wait=None):
    """Samples of ``run_once`` timed from Python. ``wait`` (for GPU engines: synchronise) runs
    after the calls of a sample, as TVM's timer does: the calls queue back to back on the GPU."""
    wait = wait or (lambda: None)
    number = calls_per_sample(lambda: (run_once(), wait()))

    def sample() -> float:
        run_once()  # each sample starts warm, whatever ran before it in the round
        wait()
        start = time.perf_counter()
        for _ in range(number):
            run_once()
        wait()
        return (time.perf_counter() - start) / number * 1e3

    return sample


def tvm_sampler(module, func_name: str, args: list):
    """Samples timed by TVM's own timer (no Python in the loop)."""
    import tvm

    number = calls_per_sample(lambda: module[func_name](*args))
    timer = module.time_evaluator(func_name, tvm.cpu(), number=number, repeat=1)

    def sample() -> float:
        module[func_name](*args)  # each sample starts warm, whatever ran before it in the round
        return timer(*args).results[0] * 1e3

    return sample


# ------------------------------------------------------------------------------------------
# Engines


def compile_float(path: str, target: str, batch: int):
    """The same ONNX through TVM with the binarization passes off: ``tvm_fp32``."""
    import json as _json

    import tvm
    from tvm import relax

    from bnn_tvm import targets

    from ..compilation.compiler import METADATA_FUNC, CompiledModel, read_pinned
    from ..frontend.onnx_import import import_to_relax

    spec = targets.get(target)
    model, name, shape = read_pinned(path, batch)
    mod, _ = import_to_relax(model, {name: shape}, path)
    metadata = {"model": os.path.basename(path), "target": spec.name, "input_name": name, "input_shape": shape,
                "outputs": [o.name for o in model.graph.output], "fused": []}
    builder = relax.BlockBuilder(mod)
    with builder.function(METADATA_FUNC, []):
        builder.emit_func_output(tvm.ir.StringImm(_json.dumps(metadata)))
    return CompiledModel(tvm.compile(builder.get(), spec.tvm_target()), metadata, [])


def run_compiled(engine: str, compiled, x: np.ndarray, settings: Settings, workdir: str, outputs: dict) -> Prepared:
    """Export a compiled model and prepare its timing here, or time it on the board over RPC."""
    path = os.path.join(workdir, f"{engine}.so")
    compiled.export(path)
    result = EngineResult(engine, note=f"module {os.path.getsize(path) / 1024:.0f} KiB")
    if settings.remote:
        from ..devices.remote import remote_bench  # the board/RPC client

        remote = remote_bench(path, settings.target, x, rpc=settings.rpc, tracker=settings.tracker, key=settings.key,
                              repeat=settings.repeat, count_instructions=settings.count_instructions)
        result.times_ms = [float(remote["median_ms"])]
        result.instructions = remote.get("instructions")
        result.note += ", timed on the board (median of its runs)"
        outputs[engine] = remote["outputs"][0]
        return Prepared(result)
    import tvm

    from ..compilation.runtime import CompiledRunner

    runner = CompiledRunner.load(path)  # on the GPU for CUDA modules
    outputs[engine] = runner.run(x)[0]
    vm, device = runner.vm, runner.device
    data = tvm.runtime.tensor(x, device)
    number = calls_per_sample(lambda: (vm["main"](data), device.sync()))
    timer = vm.time_evaluator("main", device, number=number, repeat=1)

    def sample() -> float:
        vm["main"](data)  # each sample starts warm, whatever ran before it in the round
        return timer(data).results[0] * 1e3

    return Prepared(result, sample)


def bnn_engine(workload, x, settings, workdir, outputs) -> Prepared:
    from ..compilation.compiler import compile_onnx

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
    from bnn_tvm import targets

    return settings.count_instructions and targets.get(settings.target).family == "arm"


def mca_estimates(compiled, settings: Settings) -> dict | None:
    """The estimates of ``compiled``'s kernels (computed here, from its assembly), or None. A
    CPU that llvm-mca has no model for is reported in the result, not raised: the board's
    instruction count still comes."""
    if not wants_mca(settings):
        return None
    from bnn_tvm import targets
    from bnn_tvm.targets import mca

    try:
        return mca.kernel_estimates(compiled.executable, targets.get(settings.target))
    except BnnError as err:
        mca.llvm_mca()  # a missing llvm-mca is the user's to fix: raise that one
        return {"error": str(err)}


def tvm_fp32_engine(workload, x, settings, workdir, outputs) -> Prepared:
    compiled = compile_float(workload.onnx_path, settings.target, workload.input_shape[0])
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
    from bnn_tvm import targets

    return settings.remote and targets.get(settings.target).isa == "aarch64"


def ort_board_engine(workload, x, settings, workdir, outputs) -> Prepared:
    """ONNX Runtime's aarch64 build on the board, the same ONNX and options as on x86; timed on
    the board (median of its runs), counted over one ``session.run`` like ``bnn_tvm``'s call."""
    from ..devices.remote import remote_ort_bench

    remote = remote_ort_bench(workload.onnx_path, settings.target, x, rpc=settings.rpc, tracker=settings.tracker,
                              key=settings.key, repeat=settings.repeat, count_instructions=settings.count_instructions,
                              threads=settings.threads, budget_s=settings.budget_s)
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

    from bnn_tvm import targets

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
    from bnn_tvm import targets

    return targets.get(settings.target).family == "cuda"


# ------------------------------------------------------------------------------------------
# The popcount limit


def popcount_peak(target: str, threads: int) -> dict:
    """Binary MACs per second of the bare inner loop of the conv kernels (broadcast XOR, vector
    POPCOUNT, vector ADD into a register tile of 8 positions x 2 vectors, in 32-bit or byte
    counters as the kernels count on this unit: ``schedules.cpu.count_mismatches``) on data in
    L1, on ``threads`` cores: the most the conv kernels could reach on this machine. Measured,
    best of repeats."""
    import tvm
    from tvm import s_tir, te, tirx

    from bnn_tvm import targets
    from bnn_tvm.schedules import cpu, x86

    tvm_target = targets.get(target).tvm_target()
    unit = x86.vector_unit(tvm_target)
    lanes, vectors, channels, steps, tasks = unit.lanes, 2, 8, 64, 512 * max(1, threads)
    a = te.placeholder((4, steps, channels), "uint32", name="activations")
    w = te.placeholder((steps, vectors * lanes), "uint32", name="weights")
    r = te.reduce_axis((0, steps), name="r")
    counts = te.compute(
        (tasks, channels, vectors * lanes),
        lambda t, x, o: te.sum(tirx.popcount(a[t % 4, r, x] ^ w[r, o]).astype("int32"), axis=r),
        name="mismatches",
    )
    acc = te.compute(counts.shape, lambda t, x, o: counts[t, x, o], name="acc")
    sch = s_tir.Schedule(te.create_prim_func([a, w, acc]))
    t, _, _ = sch.get_loops(sch.get_sblock("acc"))
    sch.parallel(t)
    block = sch.get_sblock("mismatches")
    sch.compute_at(block, t)
    counters = cpu.count_mismatches(sch, block, lanes, 2, 1, unit)
    lib = tvm.compile(sch.mod, tvm_target)
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.integers(0, 2**32, [int(d) for d in s.shape], dtype=np.uint32), dev) for s in (a, w)]
    args.append(tvm.runtime.tensor(np.zeros((tasks, channels, vectors * lanes), np.int32), dev))
    seconds = min(lib.mod.time_evaluator("main", dev, number=3, repeat=15)(*args).results)
    macs = tasks * channels * vectors * lanes * steps * 32
    return {
        "gmacs_per_s": macs / seconds / 1e9,
        "method": (f"measured: {channels} positions x {vectors * lanes} channels of {unit.name} accumulators "
                   f"({counters}), XOR + POPCOUNT + ADD per {lanes * 32}-bit vector on L1 data, {threads} thread(s), "
                   f"best of 15"),
    }


# ------------------------------------------------------------------------------------------
# One benchmark


def machine(spec=None) -> dict:
    """This host's CPU, and the GPU for a CUDA target ``spec``."""
    import platform

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import tvm

    found = {"cpu": name, "cores": os.cpu_count(), "llvm_cpu": tvm.target.codegen.llvm_get_system_cpu(),
             "host": platform.node()}
    if spec is not None and spec.family == "cuda":
        gpu = tvm.cuda(0)
        found["gpu"] = f"{gpu.device_name} (compute capability {gpu.compute_version})"
    return found


def measure_rounds(prepared: dict, settings: Settings, progress=None, label: str = "") -> None:
    """Interleaved rounds: each round takes one sample of every engine, so load from other
    processes on a shared machine hits all engines alike and the ratios stay meaningful. With
    several threads, each sample starts after a pause (``Settings.pause_s``) in which the
    previous engine's thread pool goes idle.
    An engine past its time budget (``Settings.budget_s``) stops after 3 samples."""
    timed = {name: p for name, p in prepared.items() if p.sample is not None}
    spent = dict.fromkeys(timed, 0.0)
    for round_index in range(settings.repeat):
        for name, p in timed.items():
            if round_index >= 3 and spent[name] > settings.budget_s:
                continue
            if settings.pause_s:
                time.sleep(settings.pause_s)  # let the previous engine's worker threads stop spinning
            start = time.perf_counter()
            p.result.times_ms.append(p.sample())
            spent[name] += time.perf_counter() - start
        if progress is not None:
            progress.set_postfix_str(f"{label}: timing round {round_index + 1}/{settings.repeat}")


def benchmark(workload: Workload, settings: Settings, engines: list[str], progress=None) -> dict:
    """Run every engine on ``workload``; the JSON-ready result (see the module docstring)."""
    from bnn_tvm import targets

    from ..compilation.runtime import check_runs_here

    spec = targets.get(settings.target)
    check_runs_here(spec, settings.remote)
    x = np.random.default_rng(0).standard_normal(workload.input_shape).astype(np.float32)
    prepared: dict[str, Prepared] = {}
    outputs: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="bnn-bench-") as workdir:
        for engine in engines:
            if engine == "topi_bitserial" and workload.layer is None:
                continue
            if progress is not None:
                progress.set_postfix_str(f"{workload.name}: preparing {engine}")
            if engine in HOST_ONLY and settings.remote and not (engine == "ort_fp32" and ort_on_board(settings)):
                prepared[engine] = Prepared(EngineResult(engine, error="runs on the host CPU only, not on the remote board"))
            else:
                try:
                    prepared[engine] = ENGINE_FUNCS[engine](workload, x, settings, workdir, outputs)
                except Exception as err:  # one failing engine must not lose the others' numbers
                    if engine == "bnn_tvm":
                        raise
                    prepared[engine] = Prepared(EngineResult(engine, error=f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"))
            if progress is not None:
                progress.update(1)
        sizes = model_sizes(workload.onnx_path, workdir)
        measure_rounds(prepared, settings, progress, workload.name)
    results = {name: p.result for name, p in prepared.items()}
    base = results["bnn_tvm"].median_ms
    report = {
        "model": workload.name,
        "target": spec.name,
        "threads": settings.threads,
        "input_shape": list(workload.input_shape),
        "machine": machine(spec) if not settings.remote else {"board": settings.rpc or f"{settings.tracker} key {settings.key}"},
        "engines": {name: r.to_json() for name, r in results.items()},
        "speedup": {name: r.median_ms / base for name, r in results.items() if r.median_ms and base},
        "sizes": sizes,
    }
    counted = results["bnn_tvm"].instructions
    if counted:  # on the emulated board: every count of the run over bnn_tvm's, the like-for-like ratio
        report["instruction_ratio"] = {name: r.instructions / counted for name, r in results.items()
                                       if r.instructions is not None}
    reference = reference_output(workload, x)
    # ONNX Runtime's own output is checked where it ran on the board (its aarch64 build); on x86
    # it is the reference's library with other optimisations.
    checked = ("bnn_tvm", "tvm_fp32", "torch_fp32") + (("ort_fp32",) if ort_on_board(settings) else ())
    for engine in checked:
        if engine in outputs:
            diff = np.abs(outputs[engine].astype(np.float64) - reference)
            report.setdefault("max_abs_diff_vs_reference", {})[engine] = float(diff.max())
    if workload.binary_macs:
        report["binary_macs"] = workload.binary_macs
        if spec.family == "x86" and not settings.remote:
            peak = popcount_peak(settings.target, settings.threads)
            report["popcount_limit"] = limit_report(workload.binary_macs, peak, results)
    return report


def ms_at_limit(binary_macs: int, peak: dict) -> float:
    """Milliseconds ``binary_macs`` take at the popcount limit ``peak`` (``popcount_peak``)."""
    return binary_macs / (peak["gmacs_per_s"] * 1e9) * 1e3


def limit_report(binary_macs: int, peak: dict, results: dict) -> dict:
    """How close ``bnn_tvm`` came to the popcount limit, and the ceiling that limit puts on every
    ratio of the run: ``speedup_at_limit[NAME]`` is how much faster than NAME a kernel doing
    nothing but the layer's ``XOR + POPCOUNT + ADD`` at the limit would be (no packing, no
    epilogue, no memory traffic); no real kernel of this design can show a larger ratio."""
    base = results["bnn_tvm"].median_ms
    achieved = binary_macs / (base / 1e3) / 1e9
    limit_ms = ms_at_limit(binary_macs, peak)
    at_limit = {name: r.median_ms / limit_ms for name, r in results.items() if name != "bnn_tvm" and r.median_ms}
    return {**peak, "achieved_gmacs_per_s": achieved, "fraction": achieved / peak["gmacs_per_s"],
            "limit_ms": limit_ms, "speedup_at_limit": at_limit}


def reference_output(workload: Workload, x: np.ndarray) -> np.ndarray:
    """The model's first output by ONNX Runtime on this host with graph optimisations off (the
    reference ``verify`` uses): what every engine's output, remote ones included, is checked
    against."""
    import onnx

    from ..compilation.verify import reference_outputs

    model = onnx.load(workload.onnx_path)
    name = next(i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer})
    return reference_outputs(model, x, name)[0]


def model_sizes(onnx_path: str, workdir: str) -> dict:
    import onnx

    from ..frontend.onnx_import import external_data_files

    model = onnx.load(onnx_path, load_external_data=False)
    float_params = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    # weights stored beside the model (PyTorch's exporter writes model.onnx.data) count too
    folder = os.path.dirname(os.path.abspath(onnx_path))
    onnx_bytes = os.path.getsize(onnx_path) + sum(os.path.getsize(os.path.join(folder, f)) for f in external_data_files(model))
    sizes = {"onnx_bytes": onnx_bytes, "fp32_parameter_bytes": 4 * float_params}
    for engine in ("bnn_tvm", "tvm_fp32"):
        path = os.path.join(workdir, f"{engine}.so")
        if os.path.isfile(path):
            sizes[f"{engine}_module_bytes"] = os.path.getsize(path)
    return sizes


# ------------------------------------------------------------------------------------------
# Reporting


def report_lines(report: dict) -> list[str]:
    threads = report["threads"]
    where = report["machine"].get("gpu") or report["machine"].get("cpu") or report["machine"].get("board")
    lines = [f"{report['model']} on {report['target']} ({where}), {threads} thread{'s' if threads != 1 else ''}"]
    lines.append(f"  {'engine':<16}{'median ms':>11}{'min ms':>10}{'runs':>6}{'bnn_tvm is':>14}  note")
    for name, r in report["engines"].items():
        if r.get("error"):
            lines.append(f"  {name:<16}{'-':>11}{'-':>10}{'-':>6}{'':>14}  {r['error']}")
            continue
        ratio = report["speedup"].get(name)
        faster = "" if name == "bnn_tvm" or ratio is None else (f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower")
        instr = f", {r['instructions']:,} instructions" if r.get("instructions") is not None else ""
        lines.append(f"  {name:<16}{r['median_ms']:>11.3f}{r['min_ms']:>10.3f}{r['runs']:>6}{faster:>14}  {r['note']}{instr}")
    ratios = {name: ratio for name, ratio in report.get("instruction_ratio", {}).items() if name != "bnn_tvm"}
    if ratios:
        lines.append("  executed instructions (one run, same board and plugin): bnn_tvm executes "
                     + ", ".join(f"{ratio:.1f}x fewer than {name}" if ratio >= 1 else f"{1 / ratio:.1f}x more than {name}"
                                 for name, ratio in ratios.items()))
    estimates = report["engines"].get("bnn_tvm", {}).get("mca")
    if estimates:
        from bnn_tvm.targets.mca import report_lines as mca_lines

        lines += mca_lines(estimates) if "error" not in estimates else [f"  llvm-mca estimate failed: {estimates['error']}"]
    sizes = report["sizes"]
    size_text = f"  sizes: ONNX {sizes['onnx_bytes'] / 1024:.0f} KiB (fp32 parameters {sizes['fp32_parameter_bytes'] / 1024:.0f} KiB)"
    for engine in ("bnn_tvm", "tvm_fp32"):
        if f"{engine}_module_bytes" in sizes:
            size_text += f", {engine} module {sizes[f'{engine}_module_bytes'] / 1024:.0f} KiB"
    lines.append(size_text)
    for engine, diff in report.get("max_abs_diff_vs_reference", {}).items():
        lines.append(f"  {engine} output vs ONNX Runtime reference (optimisations off): max abs diff {diff:.3g}")
    if "popcount_limit" in report:
        p = report["popcount_limit"]
        lines.append(f"  binary MACs {report['binary_macs'] / 1e6:.1f} M: bnn_tvm {p['achieved_gmacs_per_s']:.0f} G/s = "
                     f"{100 * p['fraction']:.0f}% of the popcount limit {p['gmacs_per_s']:.0f} G/s ({p['method']})")
        ceilings = ", ".join(f"{ratio:.1f}x {name}" for name, ratio in p.get("speedup_at_limit", {}).items())
        if ceilings:
            lines.append(f"  a kernel at that limit ({p['limit_ms']:.3f} ms, popcounts only) would be at most: {ceilings}")
    return lines


def plot(reports: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(reports), 1, figsize=(8, 1.2 + 1.6 * len(reports)), squeeze=False)
    for ax, report in zip(axes[:, 0], reports):
        names = [n for n, r in report["engines"].items() if r.get("median_ms")]
        values = [report["engines"][n]["median_ms"] for n in names]
        bars = ax.barh(names, values, color=["tab:green" if n == "bnn_tvm" else "tab:gray" for n in names])
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_title(f"{report['model']} ({report['target']}, {report['threads']} thread(s))", fontsize=9)
        for bar, name in zip(bars, names):
            ratio = report["speedup"].get(name, 1.0)
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {bar.get_width():.3g} ms ({ratio:.1f}x)",
                    va="center", fontsize=8)
        ax.set_xlabel("median ms (log scale)")
    fig.tight_layout()
    from ..atomic_files import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
