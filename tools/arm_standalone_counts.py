#!/usr/bin/env python3
"""Executed instructions of one inference of a standalone library (``compile --standalone``)
under qemu-user with the counting plugin: the way to count ``rasp3b-armv7``, which has no
emulated board (``board start`` runs aarch64 only: its root is Debian's arm64 Python and the
aarch64 TVM wheels).

    python tools/arm_standalone_counts.py --layer conv3x3:64x56x56 --target rasp3b-armv7
    python tools/arm_standalone_counts.py birealnet18 --target rasp3b-armv7
    python tools/arm_standalone_counts.py birealnet18 --target rasp3b   # aarch64, beside the board's count

The model is compiled here as a standalone library for ``--target`` (kernels and a C driver, no
TVM runtime), and a small C runner, cross-compiled with the target's gcc, loads it, runs one
inference on seeded random input (``numpy.random.default_rng(0).standard_normal``, as
``tools/arm_kernel_counts.py``), then brackets a second one with the plugin's start/stop
markers (``bnn_tvm/devices/qemu_board/insn_count.c``): the count is that second run's, the
library's kernels and driver, deterministic. The target's qemu and CPU model run it
(``qemu-arm -cpu max`` for armv7: qemu has no 32-bit Cortex-A53 model; the instructions executed
do not depend on the model). A VM module on the board counts more: the Relax VM's calls and
allocations between the kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

COUNTING_RUNNER = r"""
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MARKER_SYSCALL 4242 /* insn_count.c: 1 starts the count, 2 writes it */

typedef int (*run_all_t)(const float *, void *const *);
typedef int (*count_t)(void);
typedef int (*ndim_t)(int);
typedef const int64_t *(*input_shape_t)(void);
typedef const int64_t *(*output_shape_t)(int);
typedef const char *(*dtype_t)(int);
typedef int (*threads_t)(int);

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s LIB.so IN.bin\n", argv[0]);
        return 2;
    }
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        fprintf(stderr, "cannot load %s: %s\n", argv[1], dlerror());
        return 2;
    }
    run_all_t run_all = (run_all_t)dlsym(lib, "bnn_model_run_all");
    count_t input_ndim = (count_t)dlsym(lib, "bnn_model_input_ndim");
    input_shape_t input_shape = (input_shape_t)dlsym(lib, "bnn_model_input_shape");
    count_t num_outputs = (count_t)dlsym(lib, "bnn_model_num_outputs");
    ndim_t output_ndim = (ndim_t)dlsym(lib, "bnn_model_output_ndim");
    output_shape_t output_shape = (output_shape_t)dlsym(lib, "bnn_model_output_shape");
    dtype_t output_dtype = (dtype_t)dlsym(lib, "bnn_model_output_dtype");
    threads_t set_threads = (threads_t)dlsym(lib, "bnn_model_set_num_threads");
    size_t in_count = 1;
    for (int d = 0; d < input_ndim(); d++) in_count *= (size_t)input_shape()[d];
    float *x = malloc(in_count * sizeof(float));
    FILE *in = fopen(argv[2], "rb");
    if (in == NULL || fread(x, sizeof(float), in_count, in) != in_count) {
        fprintf(stderr, "cannot read %zu floats from %s\n", in_count, argv[2]);
        return 2;
    }
    int outputs = num_outputs();
    void **outs = calloc((size_t)outputs, sizeof(void *));
    for (int i = 0; i < outputs; i++) {
        const char *digits = output_dtype(i);
        while (*digits && (*digits < '0' || *digits > '9')) digits++;
        size_t bytes = *digits ? (size_t)atoi(digits) / 8 : 1;
        for (int d = 0; d < output_ndim(i); d++) bytes *= (size_t)output_shape(i)[d];
        outs[i] = malloc(bytes ? bytes : 1);
    }
    set_threads(1);
    if (run_all(x, outs) != 0) return 1; /* first run: lazy set-up, first touch */
    syscall(MARKER_SYSCALL, 1);
    int failed = run_all(x, outs);
    syscall(MARKER_SYSCALL, 2);
    return failed ? 1 : 0;
}
"""


def count(path: str, target: str, batch: int, folder: str) -> int:
    """Executed instructions of one inference of the ONNX model at ``path`` compiled for
    ``target`` as a standalone library, under its qemu-user with the counting plugin."""
    import numpy as np

    from bnn_tvm import targets
    from bnn_tvm.compilation.compiler import compile_onnx
    from bnn_tvm.compilation.standalone import FILES, gcc_of
    from bnn_tvm.devices.board import PLUGIN_SOURCE
    from bnn_tvm.targets.qemu_user import qemu_command

    spec = targets.get(target)
    compiled = compile_onnx(path, target, batch, standalone=True)
    library = os.path.join(folder, "model.so")
    compiled.export(library)
    source, runner, plugin = (os.path.join(folder, name) for name in ("runner.c", "runner", "insn_count.so"))
    with open(source, "w") as f:
        f.write(COUNTING_RUNNER)
    subprocess.run([gcc_of(spec), "-O1", "-I", FILES, "-o", runner, source, "-ldl"], check=True)
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", plugin, PLUGIN_SOURCE], check=True)
    x = np.random.default_rng(0).standard_normal(compiled.metadata["input_shape"]).astype("float32")
    x.tofile(os.path.join(folder, "x.bin"))
    counts = os.path.join(folder, "count")
    command = [*qemu_command(spec, "counting"), "-plugin", f"{plugin},out={counts}", runner, library,
               os.path.join(folder, "x.bin")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    (written,) = [name for name in os.listdir(folder) if name.startswith("count.")]
    with open(os.path.join(folder, written)) as f:
        return int(f.read())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="ONNX file or zoo name (default: the bundled model)")
    parser.add_argument("--layer", help="a bench layer spec instead of a model, e.g. conv3x3:64x56x56")
    parser.add_argument("--target", default="rasp3b-armv7")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--json", help="add {model, target, instructions} to this JSON file's list")
    args = parser.parse_args()

    from bnn_tvm.frontend.export import resolve_model

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from kernel_times import layer_onnx

    with tempfile.TemporaryDirectory(prefix="bnn-arm-standalone-counts-") as folder:
        path, batch = layer_onnx(args.layer, folder) if args.layer else (resolve_model(args.model), args.batch)
        executed = count(path, args.target, batch, folder)
    name = args.layer or os.path.basename(path)
    print(f"{name} on {args.target} (standalone library, 1 thread): {executed:,} executed instructions in one inference")
    if args.json:
        results = json.load(open(args.json)) if os.path.exists(args.json) else []
        results.append({"model": name, "target": args.target, "instructions": executed})
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
