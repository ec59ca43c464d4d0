#!/usr/bin/env python3
"""Static workspaces on and off, in one process: each model compiled with
``BNN_STATIC_WORKSPACES=0`` (the runner calls ``main``, which allocates its tensors per call) and
with the default (the planned call on workspaces made once), both run as ``CompiledRunner``s,
timed interleaved with ONNX Runtime (1 thread, all optimisations) in shuffled order per round.

    python tools/workspaces_ab.py dfsmn bibert_layer default --rounds 200

A sample is ``time_evaluator``'s mean of 20 calls of the call ``run`` makes (ONNX Runtime: 5
``session.run``); minimums and medians over the rounds. The outputs of the two modules are
checked equal first.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def runners(path: str):
    """``{"without": runner, "with": runner}``: the model compiled with static workspaces off and on."""
    from bnn_tvm.compilation.compiler import compile_onnx
    from bnn_tvm.compilation.runtime import CompiledRunner

    built = {}
    for name, value in (("without", "0"), ("with", "1")):
        os.environ["BNN_STATIC_WORKSPACES"] = value
        built[name] = CompiledRunner(compile_onnx(path, "x86").executable)
    os.environ.pop("BNN_STATIC_WORKSPACES")
    return built


def vm_sampler(runner, x):
    import tvm

    name, args = runner.timed_call(x)
    timer = runner.vm.time_evaluator(name, tvm.cpu(), number=20, repeat=1)

    def sample() -> float:
        runner.vm[name](*args)  # warm, whatever ran before it in the round
        return timer(*args).results[0] * 1e3

    return sample


def ort_sampler(path: str, x):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}

    def sample() -> float:
        session.run(None, feed)
        started = time.perf_counter()
        for _ in range(5):
            session.run(None, feed)
        return (time.perf_counter() - started) / 5 * 1e3

    return sample


def compare(model: str, rounds: int) -> list[str]:
    import numpy as np

    from bnn_tvm.frontend.export import resolve_model

    path = resolve_model(None if model == "default" else model)
    built = runners(path)
    x = np.random.default_rng(0).standard_normal(built["with"].input_shape).astype("float32")
    if not all(np.array_equal(a, b) for a, b in zip(built["without"].run(x), built["with"].run(x))):
        raise SystemExit(f"{model}: the outputs differ with and without static workspaces")
    samplers = {name: vm_sampler(runner, x) for name, runner in built.items()}
    samplers["ort"] = ort_sampler(path, x)
    samples: dict = {name: [] for name in samplers}
    for _ in range(rounds):
        order = list(samplers)
        random.shuffle(order)
        for name in order:
            samples[name].append(samplers[name]())
    ort = samples["ort"]
    return [f"{model}: {name:7s} static workspaces: min {min(v):.4f} median {np.median(v):.4f} ms; ONNX Runtime min "
            f"{min(ort):.4f}: {min(ort) / min(v):.1f}x by minimums, {np.median(ort) / np.median(v):.1f}x by medians"
            for name, v in ((n, samples[n]) for n in ("without", "with"))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="ONNX files, zoo names, or `default` (the bundled model)")
    parser.add_argument("--rounds", type=int, default=150, help="rounds (default 150)")
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = "1"  # read when TVM's thread pool starts
    for model in args.models:
        print("\n".join(compare(model, args.rounds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
