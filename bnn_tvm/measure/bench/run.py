"""One benchmark: every engine on one workload, interleaved, against the popcount limit."""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from .engines import ENGINE_FUNCS, HOST_ONLY, ort_on_board
from .limit import popcount_peak
from .workload import EngineResult, Prepared, Settings, Workload
from bnn_tvm import targets


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
    from ...compilation.runtime import check_runs_here

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
        "machine": machine(spec) if not settings.remote else {"board": board_address(settings.endpoint, spec.name)},
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


def board_address(endpoint, target: str) -> str:
    """The report's ``machine.board``: ``HOST:PORT`` of the RPC server, or the tracker's and the key."""
    return endpoint.rpc or f"{endpoint.tracker} key {endpoint.keys(target)[0]}"


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

    from ...compilation.reference import reference_outputs

    model = onnx.load(workload.onnx_path)
    name = next(i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer})
    return reference_outputs(model, x, name)[0]


def model_sizes(onnx_path: str, workdir: str) -> dict:
    import onnx

    from ...frontend.onnx_import import external_data_files

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
