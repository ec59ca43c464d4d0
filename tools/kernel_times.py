#!/usr/bin/env python3
"""Per-kernel times of a compiled model: where the milliseconds of one inference go.

    python tools/kernel_times.py birealnet18 --threads 1
    python tools/kernel_times.py model.onnx --target x86 --runs 30 --top 15
    python tools/kernel_times.py birealnet18 --target cuda-sm_90 --batch 64   # on a GPU host

MODEL: the bundled default (none given), an ONNX file or a zoo name (exported with seeded random
weights, as `tune` does). The module is compiled for a local target and run with a VM
instrument that times every kernel call (summed per kernel over its calls; on a GPU, each call
is waited for); the table gives the median over ``--runs`` inferences. The instrument adds a few microseconds per call, so the total
is a little above `bench`'s median; use `bench` for speed claims and this to see the split.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def kernel_times(path: str, target: str, runs: int, batch: int = 1) -> tuple[dict, float]:
    """``({kernel: median ms per inference}, median instrumented total ms)``."""
    import numpy as np
    import tvm
    from tvm import relax

    from bnn_tvm.compiler import compile_onnx
    from bnn_tvm.runtime import has_cuda_code, module_device

    compiled = compile_onnx(path, target, batch)
    device = module_device(compiled.executable)
    vm = relax.VirtualMachine(compiled.executable, device)
    shape = compiled.metadata["input_shape"]
    x = tvm.runtime.tensor(np.random.default_rng(0).standard_normal(shape).astype("float32"), device)
    current: dict = collections.defaultdict(float)
    started = {}

    # GPU kernels run asynchronously: wait for each, so that its time is its own
    sync = device.sync if has_cuda_code(compiled.executable) else (lambda: None)

    def instrument(func, symbol, before, ret, *args):
        sync()
        if before:
            started["t"] = time.perf_counter_ns()
        else:
            current[str(symbol)] += (time.perf_counter_ns() - started["t"]) / 1e6
        return 0

    vm.set_instrument(instrument)
    vm["main"](x)  # warm up
    samples: dict = collections.defaultdict(list)
    totals = []
    for _ in range(runs):
        current.clear()
        vm["main"](x)
        for name, ms in current.items():
            samples[name].append(ms)
        totals.append(sum(current.values()))
    return {name: float(np.median(values)) for name, values in samples.items()}, float(np.median(totals))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="ONNX file or zoo name (default: the bundled model)")
    parser.add_argument("--target", default="x86", help="a local target: x86 (default), or cuda[-sm_XX] on a GPU host")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="TVM worker threads (default 1)")
    parser.add_argument("--runs", type=int, default=15, help="inferences timed (default 15)")
    parser.add_argument("--top", type=int, default=25, help="kernels listed (default 25)")
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's thread pool starts

    import targets
    from bnn_tvm.errors import BnnError
    from bnn_tvm.export import resolve_model

    try:
        spec = targets.get(args.target)
        if not spec.is_host and spec.family != "cuda":
            raise BnnError(f"--target {args.target}: this tool runs the model here, and that target is not this machine")
        path = resolve_model(args.model)
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
