"""LayerNorm over the last axis on CPUs: the row sums of ``lanes`` rows as one vector.

TVM's lowering of ``nn.layer_norm`` (axis -1, with ``gamma`` and ``beta``) computes per row
``sum = S x`` and ``mean = sum / H``, then ``var_sum = S (x - mean) * (x - mean)`` and
``(x - mean) * rsqrt(var_sum / H + eps) * gamma + beta``, each sum over the hidden axis in order
from 0. A row's sum is one serial chain; ``schedules.float_ops`` runs 8 rows' chains side by
side in scalar registers (BiBERT's 64 x 256 LayerNorm: 14 us). Here ``lanes`` rows are one
vector: step ``k`` adds the ``k``-th value of each of them (a strided load, a gather on AVX-512),
so every row is still summed in its own order, from 0, with the same operations (the
``acc + d * d`` of the variance is the FMA LLVM makes of it in either form); the normalisation
runs along the row as vectors, ``rsqrt`` once per row. The result is bit-identical to the
default lowering (``tests/test_float_erf.py``, ``tests/test_hand_written_float_ops.py``);
BiBERT's LayerNorm 14 -> 6 us.

For float32 rows whose count ``lanes`` divides, on vector units of 8 lanes or more (x86; NEON's
4 lanes keep ``float_ops``' interleaved rows). The row groups run in parallel where the kernel
does enough work (``cpu.PARALLEL_MIN_WORK``).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import tirx

from . import cpu, float_ops
from .calls import rewrite_calls

LAYER_NORM = "relax.nn.layer_norm"
MIN_LANES = 8


def _f32(value: float):
    return tirx.const(float(np.float32(value)), "float32")


def applies(call, lanes32: int) -> bool:
    """A float32 LayerNorm over the last axis with ``gamma`` and ``beta``, rows in whole vectors."""
    attrs = call.attrs
    x = call.args[0]
    try:
        shape = [int(d) for d in x.ty.shape.values]
    except (TypeError, AttributeError):  # symbolic shapes
        return False
    axes = [int(a) for a in attrs.axes]
    if str(x.ty.dtype) != "float32" or axes not in ([-1], [len(shape) - 1]) or not (attrs.center and attrs.scale):
        return False
    rows = int(np.prod(shape[:-1]))
    return lanes32 >= MIN_LANES and rows % lanes32 == 0 and shape[-1] % lanes32 == 0


def layer_norm_rows(shape, lanes: int, epsilon: float) -> tirx.PrimFunc:
    """``(x, gamma [H], beta [H], out)``: the module doc's kernel for ``x`` of ``shape``."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    hidden = int(shape[-1])
    rows = int(np.prod(shape[:-1]))
    vector = tirx.Ramp(0, 1, lanes)
    with IRBuilder() as builder:
        with T.prim_func():
            T.func_attr({"tirx.noalias": True})
            x = T.arg("x", T.buffer([int(d) for d in shape], "float32"))
            gamma = T.arg("gamma", T.buffer((hidden,), "float32"))
            beta = T.arg("beta", T.buffer((hidden,), "float32"))
            out = T.arg("out", T.buffer([int(d) for d in shape], "float32"))
            with T.sblock("root"):
                flat_x = T.decl_buffer((rows * hidden,), "float32", data=x.data)
                flat_out = T.decl_buffer((rows * hidden,), "float32", data=out.data)
                parallel = rows > lanes and rows * hidden >= cpu.PARALLEL_MIN_WORK
                with (T.parallel if parallel else T.serial)(0, rows // lanes) as group:
                    acc = T.alloc_buffer((lanes,), "float32", scope="local")
                    mean = T.alloc_buffer((lanes,), "float32", scope="local")
                    first = group * lanes * hidden

                    def column(k):  # the k-th value of each of the group's rows
                        return flat_x[tirx.Ramp(first + k, hidden, lanes)]

                    def row_sums(term):
                        T.buffer_store(acc, tirx.Broadcast(_f32(0.0), lanes), [vector])
                        with T.serial(0, hidden) as k:
                            T.buffer_store(acc, acc[vector] + term(column(k)), [vector])

                    row_sums(lambda value: value)
                    T.buffer_store(mean, acc[vector] / tirx.Broadcast(_f32(hidden), lanes), [vector])
                    row_sums(lambda value: (value - mean[vector]) * (value - mean[vector]))
                    with T.serial(0, lanes) as row:
                        scale = tirx.rsqrt(acc[row] / _f32(hidden) + _f32(epsilon))
                        with T.serial(0, hidden // lanes) as part:
                            at = tirx.Ramp(first + row * hidden + part * lanes, 1, lanes)
                            channels = tirx.Ramp(part * lanes, 1, lanes)
                            centred = flat_x[at] - tirx.Broadcast(mean[row], lanes)
                            T.buffer_store(flat_out, centred * tirx.Broadcast(scale, lanes) * gamma[channels]
                                           + beta[channels], [at])
    return builder.get()


def rewrite_layer_norms(mod: tvm.IRModule, lanes32: int, plans: dict | None = None) -> tvm.IRModule:
    """Replace the LayerNorms of ``mod``'s Relax functions that ``applies`` accepts by the kernel."""
    op = tvm.ir.Op.get(LAYER_NORM)

    def rewrite(mutator, call):
        if call.op != op or not applies(call, lanes32):
            return None
        shape = [int(d) for d in call.args[0].ty.shape.values]
        func = layer_norm_rows(shape, lanes32, float(call.attrs.epsilon))
        plan = f"float: layer norm, {lanes32} rows' sums as one vector each step"
        return float_ops.call_hand_written(mutator, func, plan, "layer_norm", list(call.args[:3]), call.ty, plans)

    return rewrite_calls(mod, rewrite)
