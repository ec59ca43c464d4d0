"""What is measured: workloads (a layer or a model), settings, results and the samplers."""

from __future__ import annotations

import os
import re
import statistics
import time
from dataclasses import dataclass, field

from ...devices.endpoint import Endpoint
from .layers import LayerSpec


PAUSE_S = 0.2  # idle seconds before each sample with several threads (``Settings.pause_s``)


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
    from ...training import models
    from ...frontend.export import is_checkpoint, resolve_model

    path = resolve_model(model, cache=os.path.join(workdir, "models"))
    if os.path.isfile(model) and not is_checkpoint(model):
        from ...compilation.compiler import input_shape as onnx_input_shape
        from ...frontend.onnx_import import standard_onnx
        from ..onnx_torch import module_from_onnx

        path, model = standard_onnx(path, workdir)  # QONNX ops expanded: ONNX Runtime and PyTorch cannot run them
        _, shape = onnx_input_shape(model, path, batch)
        return Workload(os.path.basename(path), path, tuple(shape), lambda: module_from_onnx(path, shape[0]),
                        "the ONNX graph run node by node in PyTorch (bnn_tvm.measure.onnx_torch)", torch_same_graph=True)
    if os.path.isfile(model):
        from ...training.train import load_checkpoint

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
    endpoint: Endpoint = Endpoint()  # the board the TVM engines run on (default: here)
    count_instructions: bool = False
    db: str | None = None  # tuning records for bnn_tvm (``tune``, ``compile --db``)
    sign_zero: str = "exact"  # Sign(0) for bnn_tvm (relay_passes.conventions.SIGN_ZERO)

    @property
    def remote(self) -> bool:
        return self.endpoint.remote or self.count_instructions

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
