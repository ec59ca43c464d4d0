#!/usr/bin/env python3
"""Accuracy of the vectorised float32 erf (``schedules.float_erf``) against the correctly rounded
erf (scipy's float64 erf, rounded once) and the C library's ``erff`` (TVM's default lowering),
over every float32 in a range, and where each reaches exactly 1.

    python tools/erf_accuracy.py               # every float32 in [2^-12, 4], both signs
    python tools/erf_accuracy.py --low 1e-3 --high 6 --stride 7
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def erf_kernels(target=None):
    """``(vectorised erf_f32, libm erff)`` as compiled functions of a float32 array (in place-free)."""
    import tvm
    from tvm import te

    from bnn_tvm.schedules.float_erf import erf_f32

    target = target or {"kind": "llvm", "mcpu": os.environ.get("BNN_ERF_MCPU", "znver4")}
    n = te.var("n")
    built = []
    for fn in (erf_f32, te.erf):
        x = te.placeholder((n,), "float32", name="x")
        y = te.compute((n,), lambda i: fn(x[i]), name="y")
        sch = tvm.s_tir.Schedule(te.create_prim_func([x, y]))
        (loop,) = sch.get_loops(sch.get_sblock("y"))
        _, inner = sch.split(loop, [None, 16])
        sch.vectorize(inner)
        built.append(tvm.compile(sch.mod, target=target))

    def runner(mod):
        def run(values):
            values = np.ascontiguousarray(values, np.float32)
            pad = (-values.size) % 16
            padded = np.concatenate([values, np.zeros(pad, np.float32)])
            out = tvm.runtime.tensor(np.empty_like(padded))
            mod(tvm.runtime.tensor(padded), out)
            return out.numpy()[: values.size]
        return run

    return runner(built[0]), runner(built[1])


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Float32 steps between ``a`` and ``b`` (same-sign, finite values)."""
    ia, ib = a.view(np.int32).astype(np.int64), b.view(np.int32).astype(np.int64)
    ia = np.where(ia < 0, -(ia & 0x7FFFFFFF), ia)
    ib = np.where(ib < 0, -(ib & 0x7FFFFFFF), ib)
    return np.abs(ia - ib)


def sweep(low: float, high: float, stride: int = 1, chunk: int = 1 << 22):
    """Every ``stride``-th float32 in ``[low, high]`` and its negative: max ulp errors and counts."""
    from scipy import special

    fast, libm = erf_kernels()
    start, stop = np.float32(low).view(np.int32), np.float32(high).view(np.int32)
    stats = {"values": 0, "fast_max_ulp": 0, "fast_off": 0, "libm_max_ulp": 0, "libm_off": 0, "fast_vs_libm_max_ulp": 0,
             "fast_vs_libm_differ": 0, "sign_or_one_mismatch": 0, "worst": None}
    for first in range(int(start), int(stop) + 1, chunk * stride):
        bits = np.arange(first, min(first + chunk * stride, int(stop) + 1), stride, dtype=np.int32)
        y = bits.view(np.float32)
        y = np.concatenate([y, -y])
        exact = special.erf(y.astype(np.float64)).astype(np.float32)
        got, ref = fast(y), libm(y)
        d_fast, d_libm, d_both = ulp_distance(got, exact), ulp_distance(ref, exact), ulp_distance(got, ref)
        stats["values"] += y.size
        if d_fast.max() > stats["fast_max_ulp"]:
            stats["fast_max_ulp"] = int(d_fast.max())
            stats["worst"] = float(y[np.argmax(d_fast)])
        stats["fast_off"] += int(np.count_nonzero(d_fast))
        stats["libm_max_ulp"] = max(stats["libm_max_ulp"], int(d_libm.max()))
        stats["libm_off"] += int(np.count_nonzero(d_libm))
        stats["fast_vs_libm_max_ulp"] = max(stats["fast_vs_libm_max_ulp"], int(d_both.max()))
        stats["fast_vs_libm_differ"] += int(np.count_nonzero(d_both))
        # what a binarizer after a GELU depends on: the sign, and whether erf is exactly -1 / +1
        stats["sign_or_one_mismatch"] += int(np.count_nonzero((np.sign(got) != np.sign(ref)) | ((np.abs(got) == 1) != (np.abs(ref) == 1))))
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--low", type=float, default=2.0**-12)
    parser.add_argument("--high", type=float, default=4.0)
    parser.add_argument("--stride", type=int, default=1, help="test every N-th float32 (default: all)")
    args = parser.parse_args()
    stats = sweep(args.low, args.high, args.stride)
    for key, value in stats.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
