"""Larq models as a Larq user reaches ONNX (tf2onnx), in bnn-tvm and in Larq Compute Engine's
interpreter (its default kernels and ``use_indirect_bgemm``), timed in one interleaved run.

    python tools/larq_vs_lce.py --tf-python TFVENV/bin/python [--models custom,quicknet] [--rounds 5] [--runs 20] [--json F]

``TFVENV``: a separate venv with ``tensorflow-cpu==2.16.2 "tf-keras~=2.16.0"
"larq-compute-engine==0.16.*" "larq==0.14.*" larq-zoo tf2onnx`` (TensorFlow cannot share the
project's venv). ``tools/lce_worker.py`` exports each model there (``weights=None``, random
batch-norm statistics) and times LCE; bnn-tvm compiles the ONNX file for x86 here. Each round
times every engine on every model, 1 thread, median of ``--runs`` calls; the table shows the
median over rounds, binary convs / convs (``inspect``) and verify's verdict. LCE's x86 kernels are
not its optimised ARM ones (its documentation says so): this is what an x86 user of LCE gets.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from tqdm import tqdm

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lce_worker.py")
MODELS = ("custom", "quicknet", "birealnet", "binarydensenet28", "xnornet")
ENGINES = ("lce_default", "lce_indirect_bgemm", "bnn_tvm")


def bnn_tvm_timer(path: str):
    from bnn_tvm.compilation.compiler import compile_onnx
    from bnn_tvm.compilation.runtime import CompiledRunner

    compiled = compile_onnx(path, "x86")
    runner = CompiledRunner(compiled.executable)
    x = np.random.default_rng(0).standard_normal(compiled.metadata["input_shape"]).astype(np.float32)
    runner.run(x)

    def time_runs(runs: int) -> float:
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            runner.run(x)
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    return time_runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tf-python", required=True, help="python of the venv with TensorFlow, Larq and LCE")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    models = args.models.split(",")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    if not os.access(args.tf_python, os.X_OK):
        parser.error(f"--tf-python {args.tf_python}: not an executable")

    # read when TVM's thread pool starts: one worker, as LCE's interpreter gets (num_threads=1);
    # unset, TVM takes every core and its kernels then wait on each other's share of a busy machine
    os.environ["TVM_NUM_THREADS"] = "1"
    from bnn_tvm.compilation.inspection import inspect_onnx
    from bnn_tvm.compilation.verify import verify

    rows = {}
    with tempfile.TemporaryDirectory(prefix="larq-vs-lce-") as folder:
        for name in tqdm(models, desc="export (tf2onnx, LCE converter)", unit="model"):
            subprocess.run([args.tf_python, WORKER, "export", name, folder], check=True, capture_output=True)
        timers, info = {}, {}
        for name in tqdm(models, desc="compile, inspect, verify", unit="model"):
            path = os.path.join(folder, f"{name}.onnx")
            convs = [r for r in inspect_onnx(path) if r.op_type == "Conv"]
            report = verify(path, "x86")
            info[name] = {"binary_convs": sum(r.binary for r in convs), "convs": len(convs), "verify_ok": report.ok,
                          "verify": [line for line in report.lines() if not line.startswith("fused:")]}
            timers[name] = bnn_tvm_timer(path)
        worker = subprocess.Popen([args.tf_python, WORKER, "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)

        def lce(name: str, indirect: bool) -> float:
            request = {"tflite": os.path.join(folder, f"{name}.tflite"), "indirect": indirect, "runs": args.runs}
            worker.stdin.write(json.dumps(request) + "\n")
            worker.stdin.flush()
            return json.loads(worker.stdout.readline())["ms"]

        samples = {name: {engine: [] for engine in ENGINES} for name in models}
        for _ in tqdm(range(args.rounds), desc="interleaved rounds", unit="round"):
            for name in models:
                samples[name]["lce_default"].append(lce(name, False))
                samples[name]["lce_indirect_bgemm"].append(lce(name, True))
                samples[name]["bnn_tvm"].append(timers[name](args.runs))
        worker.stdin.close()
        worker.wait()
    print(f"{'model':18} {'binary convs':>12} {'verify':>7} {'LCE default':>11} {'LCE indirect':>12} {'bnn_tvm':>8} "
          f"{'vs best LCE':>11}")
    for name in models:
        medians = {engine: statistics.median(values) for engine, values in samples[name].items()}
        best = min(medians["lce_default"], medians["lce_indirect_bgemm"])
        rows[name] = {**info[name], "median_ms": medians, "samples_ms": samples[name],
                      "speedup_vs_best_lce": best / medians["bnn_tvm"]}
        print(f"{name:18} {info[name]['binary_convs']:>5} / {info[name]['convs']:<4} "
              f"{'OK' if info[name]['verify_ok'] else 'FAILED':>7} {medians['lce_default']:>11.3f} "
              f"{medians['lce_indirect_bgemm']:>12.3f} {medians['bnn_tvm']:>8.3f} {rows[name]['speedup_vs_best_lce']:>10.1f}x")
    for name in models:
        if not info[name]["verify_ok"]:
            print(f"{name}: " + "; ".join(info[name]["verify"]))
    from bnn_tvm.measure.bench.run import machine

    print(f"machine: {machine()}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": machine(), "models": rows}, handle, indent=1)
    return 0 if all(row["verify_ok"] for row in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
