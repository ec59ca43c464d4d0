"""The model with and without the database, in one run."""

from __future__ import annotations

import os
import time

import numpy as np

from ...errors import BnnError
from bnn_tvm import targets
from ..bench.limit import popcount_peak
from ..bench.run import ms_at_limit
from ..summary import summarize_onnx


def compare_model(path: str, target: str, db_dir: str, batch: int | None = None, rounds: int = 15) -> dict:
    """Compile the model without and with the database and time both, interleaved round by round:
    each binary kernel call (a VM instrument around every call; binary kernels are named
    ``bnn_*``, float convs ``bnn_float_*``) and the whole model (``time_evaluator``, no instrument). Medians over the rounds."""
    import tvm
    from tvm import relax

    from ...compilation.compiler import compile_onnx

    if not targets.get(target).is_host:
        raise BnnError(f"--compare runs the model here; target {target} is not this machine")
    builds = {"untuned": compile_onnx(path, target, batch), "tuned": compile_onnx(path, target, batch, db=db_dir)}
    shape = builds["untuned"].metadata["input_shape"]
    data = tvm.runtime.tensor(np.random.default_rng(0).standard_normal(shape).astype("float32"), tvm.cpu())
    samples = {name: {"binary_ms": [], "model_ms": []} for name in builds}
    machines = {}
    for name, build in builds.items():
        timed, plain = (relax.VirtualMachine(build.executable, tvm.cpu()) for _ in range(2))
        spent = {"ns": 0, "start": 0}

        def instrument(func, symbol, before, ret, *args, spent=spent):
            if str(symbol).startswith("bnn_") and not str(symbol).startswith("bnn_float_"):  # binary kernels only
                if before:
                    spent["start"] = time.perf_counter_ns()
                else:
                    spent["ns"] += time.perf_counter_ns() - spent["start"]
            return 0

        timed.set_instrument(instrument)
        timed["main"](data)  # warm-up
        machines[name] = (timed, plain.time_evaluator("main", tvm.cpu(), number=10, repeat=1), spent)
    for _ in range(rounds):
        for name, (timed, model_timer, spent) in machines.items():
            spent["ns"] = 0
            timed["main"](data)
            samples[name]["binary_ms"].append(spent["ns"] / 1e6)
            samples[name]["model_ms"].append(model_timer(data).mean * 1e3)
    medians = {name: {k: float(np.median(v)) for k, v in s.items()} for name, s in samples.items()}
    return {
        "rounds": rounds,
        "untuned": medians["untuned"],
        "tuned": medians["tuned"],
        "binary_speedup": medians["untuned"]["binary_ms"] / medians["tuned"]["binary_ms"],
        "model_speedup": medians["untuned"]["model_ms"] / medians["tuned"]["model_ms"],
        "popcount_limit": binary_limit(path, target, int(shape[0]), medians["untuned"]["binary_ms"]),
    }


def binary_limit(path: str, target: str, batch: int, untuned_binary_ms: float) -> dict:
    """The model's binary MACs at the popcount limit (``bench.popcount_peak``, at the thread
    count TVM uses here): ``limit_ms``, and ``binary_speedup_at_limit``, the most any schedule of
    the popcount kernels could gain over the untuned build's binary kernels (every binary
    kernel doing nothing but its ``XOR + POPCOUNT + ADD`` at the limit)."""
    threads = int(os.environ.get("TVM_NUM_THREADS", 0)) or os.cpu_count() or 1
    macs = summarize_onnx(path).macs_by_bits().get(1, 0) * batch
    peak = popcount_peak(target, threads)
    limit_ms = ms_at_limit(macs, peak)
    return {**peak, "binary_macs": macs, "limit_ms": limit_ms,
            "binary_speedup_at_limit": untuned_binary_ms / limit_ms if limit_ms else None}
