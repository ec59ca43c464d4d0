"""Float matmul with a constant weight (a network's FC layer), for CPUs: the weight blocked at
compile time.

``x [..., K] @ W [K, J]`` with ``W`` constant (leading axes of ``x``, such as a token matmul's
``[B, T, K]``, are rows). Vectors of outputs (``L`` consecutive ``j``) read,
for every ``k``, an ``L``-float slice of ``W``'s row ``k``: a task strides through all ``K`` rows,
a pattern the prefetcher follows poorly, and the FC layer of ResNet-18 reads its 2 MB of weights
from memory once per inference. Here ``W`` is stored as ``[J / L, K, L]``, so each vector of
outputs streams one contiguous block.

Each output is still ``sum over k, in order, of x[n, k] * W[k, j]`` from 0, the expression and
order of TVM's lowering, so results are bit-identical to it (``tests/test_float_ops.py``).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, s_tir, te

from . import cpu, float_conv, float_ops
from .calls import rewrite_calls

MATMUL = "relax.matmul"
BLOCKS_PER_TASK = 8  # at most, vectors of outputs per row of a parallel task: independent FMA chains
ROWS_PER_TASK = 4  # at most, rows per parallel task: each weight vector loaded once for them
ACCUMULATORS = 16  # at most, vector accumulators per task (rows x vectors), of 32 vector registers


def blocked_weight(weight: np.ndarray, lanes: int) -> np.ndarray:
    """``W [K, J] -> [J / lanes, K, lanes]``."""
    k, j = weight.shape
    return np.ascontiguousarray(weight.reshape(k, j // lanes, lanes).transpose(1, 0, 2))


def matmul_blocked(x: te.Tensor, blocked: te.Tensor) -> te.Tensor:
    """``x @ W`` with ``W`` given blocked (``blocked_weight``); ``x``: ``[..., K]``."""
    *rows, k = (int(v) for v in x.shape)
    blocks, _, lanes = (int(v) for v in blocked.shape)
    r = te.reduce_axis((0, k), name="k")
    return te.compute(
        (*rows, blocks * lanes),
        lambda *ij: te.sum(x[(*ij[:-1], r)] * blocked[ij[-1] // lanes, r, ij[-1] % lanes], axis=r), name="matmul",
    )


def schedule(func, lanes: int) -> tuple[tvm.tirx.PrimFunc, str]:
    """Groups of rows x groups of blocks in parallel; per task, ``k`` in order outside its rows'
    vectors of outputs, which stay in registers (a row group shares each weight vector it
    loads; a single row, the FC layer, takes a longer group of vectors instead)."""
    sch = s_tir.Schedule(func)
    block = sch.get_sblock("matmul")
    *rows, j, k = sch.get_loops(block)
    i = sch.fuse(*rows) if len(rows) > 1 else rows[0]
    height, width = cpu.extents(sch, [i, j])
    row_group = cpu.largest_divisor(height, ROWS_PER_TASK)
    group = cpu.largest_divisor(width // lanes, min(BLOCKS_PER_TASK, ACCUMULATORS // row_group))
    row_task, row = sch.split(i, [None, row_group])
    task, vector, lane = sch.split(j, [None, group, lanes])
    sch.reorder(row_task, task, k, row, vector, lane)
    cpu.parallel(sch, sch.fuse(row_task, task), cpu.block_work(sch, block))
    cache = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(cache, sch.get_loops(block)[0])
    sch.unroll(row)
    sch.unroll(vector)
    sch.vectorize(lane)
    sch.decompose_reduction(block, k)
    sch.vectorize(sch.get_loops(cache)[-1])
    plan = (f"float: matmul, weight blocked [J/{lanes}, K, {lanes}] at compile time, k in order outside "
            f"{row_group} rows x {group} vectors")
    return sch.mod["main"], plan


def rewrite_matmuls(mod: tvm.IRModule, lanes32: int, plans: dict | None = None) -> tvm.IRModule:
    """Replace ``matmul(x [..., K], constant [K, J])`` (float32) by the blocked kernel."""
    op = tvm.ir.Op.get(MATMUL)

    def rewrite(mutator, call):
        if call.op != op or str(call.ty.dtype) != "float32":
            return None
        x = call.args[0]
        weight = float_conv.constant_weight(call, mutator.lookup_binding)
        if weight is None or len(weight.ty.shape) != 2 or len(x.ty.shape) < 2:
            return None
        weight = weight.value.numpy()
        if weight.size == 0:  # an empty weight (a Linear with 0 features): nothing to block, TVM's lowering
            return None
        lanes = cpu.power_of_two_divisor(weight.shape[1], lanes32)
        if lanes < 4:
            return None
        blocked = blocked_weight(weight, lanes)
        xt = te.placeholder([int(v) for v in x.ty.shape.values], "float32", "x")
        wt = te.placeholder(blocked.shape, "float32", "w")
        func, plan = schedule(te.create_prim_func([xt, wt, matmul_blocked(xt, wt)]), lanes)
        return float_ops.call_hand_written(mutator, func, plan, "matmul", [x, relax.const(blocked)], call.ty, plans)

    return rewrite_calls(mod, rewrite)
