"""The popcount limit: one core's binary MACs per second in a kernel that does nothing else."""

from __future__ import annotations

import numpy as np

from bnn_tvm import targets


def popcount_peak(target: str, threads: int) -> dict:
    """Binary MACs per second of the bare inner loop of the conv kernels (broadcast XOR, vector
    POPCOUNT, vector ADD into a register tile of 8 positions x 2 vectors, in 32-bit or byte
    counters as the kernels count on this unit: ``schedules.cpu.count_mismatches``) on data in
    L1, on ``threads`` cores: the most the conv kernels could reach on this machine. Measured,
    best of repeats."""
    import tvm
    from tvm import s_tir, te, tirx

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
