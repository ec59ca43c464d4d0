#!/usr/bin/env python3
"""Per-kernel times of a compiled model: where the milliseconds of one inference go.

    python tools/kernel_times.py birealnet18 --threads 1
    python tools/kernel_times.py model.onnx --target x86 --runs 30 --top 15
    python tools/kernel_times.py birealnet18 --target cuda-sm_90 --batch 64   # on a GPU host
    python tools/kernel_times.py --layer conv3x3:64x56x56 --target rasp3b    # ARM: llvm-mca estimates

MODEL: the bundled default (none given), an ONNX file or a zoo name (exported with seeded random
weights, as `tune` does). The module is compiled for a local target and run with a VM
instrument that times every kernel call (summed per kernel over its calls; on a GPU, each call
is waited for); the table gives the median over ``--runs`` inferences. The instrument adds a few microseconds per call, so the total
is a little above `bench`'s median; use `bench` for speed claims and this to see the split.

An ARM target (``rasp3b``, ...) does not run here: for it the tool prints, per binary kernel,
llvm-mca's *estimate* of its inner loop on the target's CPU model (cycles per iteration and per
binary MAC, ``targets.mca``), from the module's assembly; no board is needed. Time the module on
a board with ``bench --count-instructions``.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def kernel_times(path: str, target: str, runs: int, batch: int = 1) -> tuple[dict, float]:
    """``({kernel: median ms per inference}, median instrumented total ms)``."""
    import numpy as np

    from bnn_tvm.compilation.compiler import compile_onnx
    from bnn_tvm.compilation.runtime import CompiledRunner, has_cuda_code

    compiled = compile_onnx(path, target, batch)
    runner = CompiledRunner(compiled.executable)  # the call `run` and `bench` make (static workspaces)
    device, vm = runner.device, runner.vm
    name, args = runner.timed_call(np.random.default_rng(0).standard_normal(runner.input_shape).astype("float32"))
    current: dict = collections.defaultdict(float)
    started = {}

    # GPU kernels run asynchronously: wait for each, so that its time is its own
    sync = device.sync if has_cuda_code(compiled.executable) else (lambda: None)

    def instrument(func, symbol, before, ret, *_args):
        sync()
        if before:
            started["t"] = time.perf_counter_ns()
        else:
            current[str(symbol)] += (time.perf_counter_ns() - started["t"]) / 1e6
        return 0

    vm.set_instrument(instrument)
    vm[name](*args)  # warm up
    samples: dict = collections.defaultdict(list)
    totals = []
    for _ in range(runs):
        current.clear()
        vm[name](*args)
        for kernel, ms in current.items():
            samples[kernel].append(ms)
        totals.append(sum(current.values()))
    return {kernel: float(np.median(values)) for kernel, values in samples.items()}, float(np.median(totals))


def arm_estimates(path: str, target: str, batch: int) -> list[str]:
    """llvm-mca's estimates of the kernels' inner loops for an ARM target (``targets.mca``)."""
    from bnn_tvm import targets
    from bnn_tvm.compilation.compiler import compile_onnx
    from bnn_tvm.targets import mca

    mca.target_cpu(targets.get(target))  # before compiling: say at once what cannot be estimated
    mca.llvm_mca()
    compiled = compile_onnx(path, target, batch)
    estimates = mca.kernel_estimates(compiled.executable, targets.get(target))
    return [f"{os.path.basename(path)} on {target}, batch {batch}: an ARM target, so not run here"] + mca.report_lines(estimates)


def layer_onnx(spec_text: str, folder: str) -> tuple[str, int]:
    """A ``bench --layer`` spec (e.g. conv3x3:64x56x56) as an ONNX file in ``folder``, and its
    batch (the layer's ``batch=N``; the file fixes it)."""
    from bnn_tvm.measure.bench.layers import LayerSpec
    from bnn_tvm.measure.bench.workload import layer_workload

    spec = LayerSpec.parse(spec_text)
    return layer_workload(spec, folder).onnx_path, spec.batch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="ONNX file or zoo name (default: the bundled model)")
    parser.add_argument("--layer", metavar="SPEC", help="one binary conv layer instead of a model, as `bench --layer` "
                        "takes it (convKxK:CxHxW[,out=OC][,stride=S][,pad=P][,batch=N])")
    parser.add_argument("--target", default="x86", help="a local target: x86 (default), or cuda[-sm_XX] on a GPU host; "
                        "an ARM target (rasp3b, ...) prints llvm-mca estimates instead of times")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="TVM worker threads (default 1)")
    parser.add_argument("--runs", type=int, default=15, help="inferences timed (default 15)")
    parser.add_argument("--top", type=int, default=25, help="kernels listed (default 25)")
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's thread pool starts

    from bnn_tvm import targets
    from bnn_tvm.errors import BnnError
    from bnn_tvm.frontend.export import resolve_model

    try:
        spec = targets.get(args.target)
        if not spec.is_host and spec.family not in ("cuda", "arm"):
            raise BnnError(f"--target {args.target}: this tool runs the model here, and that target is not this machine")
        if args.layer and args.model:
            raise BnnError("give either MODEL or --layer, not both")
        with tempfile.TemporaryDirectory(prefix="bnn-kernel-times-") as folder:
            if args.layer:
                path, args.batch = layer_onnx(args.layer, folder)
            else:
                path = resolve_model(args.model)
            if spec.family == "arm":
                print("\n".join(arm_estimates(path, args.target, args.batch)))
                return 0
            times, total = kernel_times(path, args.target, args.runs, args.batch)
    except BnnError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{os.path.basename(path)} on {args.target}, batch {args.batch}, {args.threads} thread(s): {total:.2f} ms per inference "
          f"(instrumented, median of {args.runs})")
    for name, ms in sorted(times.items(), key=lambda item: -item[1])[: args.top]:
        print(f"{ms:9.3f} ms  {100 * ms / total:5.1f} %  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
