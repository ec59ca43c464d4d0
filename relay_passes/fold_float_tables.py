"""Fold the float ops after a binary kernel into a per-channel lookup table, where it is small.

A binary conv/dense produces an integer ``d`` in a known range; the bias, batch norm or scale
after it are a per-channel function of ``d``. Where that chain ends in a float consumer (a
graph output, a residual add, a float layer), its value for every possible ``d`` is computed at
compile time in float32, in ONNX Runtime's order, and the kernel looks it up: the result is
bit-identical to the reference on every target, whatever the target's compiler does with
multiply-adds. On CPUs ``FoldFloatEpilogues`` runs first and leaves only k-bit (``multibit``)
chains here; CUDA kernels use tables for all. Chains whose float value is only known within a
rounding band, and tables over ``MAX_TABLE_ENTRIES``, stay float.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.ir import Constant

from schedules import bitserial

from .common import PassLog, RuleContext, function_rule_pass
from .fold_thresholds import (
    CHAIN_OPS,
    analyse_chain,
    integer_dot,
    integer_inputs,
    kernel_params,
    per_channel,
    viewed_as,
)

MAX_TABLE_ENTRIES = 1 << 18  # 1 MiB of float32 per layer


def is_chain_step(value, operands) -> bool:
    """What ``trace_chain`` can walk through: one variable operand, the others per-channel
    constants (a residual add has two variables; a spatially varying constant ends a chain)."""
    if not (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name in CHAIN_OPS):
        return False
    if sum(isinstance(v, relax.Var) for v in operands) != 1:
        return False
    out_shape = tuple(int(d) for d in value.args[0].ty.shape.values)
    # tensor constants (clip's bounds are scalar constants holding a float)
    constants = [v.value.numpy() for v in operands if isinstance(v, Constant) and hasattr(v.value, "numpy")]
    if value.op.name in ("relax.nn.batch_norm", "relax.nn.prelu"):  # constants along their axis
        return int(value.attrs.axis) == 1
    return all(per_channel(c, out_shape) is not None for c in constants)


def chain_ends(func: relax.Function) -> set[str]:
    """Variables read by something other than a per-channel float op, or returned."""
    ends = set()
    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if not isinstance(binding.var, relax.DataflowVar):
                ends.add(binding.var.name)
            if isinstance(value, relax.TupleGetItem):
                continue
            operands = list(value.args) if isinstance(value, relax.Call) else list(getattr(value, "fields", [value]))
            # a call_tir (one of our kernels) takes its tensors as a tuple
            operands = [field for v in operands for field in (v.fields if isinstance(v, relax.Tuple) else [v])]
            if not is_chain_step(value, operands):
                ends.update(v.name for v in operands if isinstance(v, relax.Var))
    return ends


def table_rule(ends: set[str]):
    def fold_table(ctx: RuleContext, expr):
        if ctx.binding not in ends or ctx.bnn_kernel(expr) is not None:
            return None
        chain = analyse_chain(ctx, expr)
        if chain is None or not chain.steps:
            return None
        if not chain.known_exactly:
            return None  # the float graph's own value is only known within rounding: keep float
        entries = chain.channels * (2 * chain.levels * chain.taps + 1)
        if entries > MAX_TABLE_ENTRIES:
            ctx.keep_float(f"float ops after a binary kernel: a table would need {entries} entries", *chain.visited[1:-1])
            return None
        dot = integer_dot(chain.name, chain.attrs)
        offset = chain.levels * chain.taps
        inputs = ctx.kernel_inputs(chain.source)[: integer_inputs(chain.name, chain.attrs)]
        kernel = f"{chain.name}_table"
        ctx.fused(kernel, f"{chain.name} + {len(chain.steps)} float op(s) as a lookup table", *chain.visited[1:])
        computed = ctx.emit_kernel(
            lambda *args: bitserial.table_lookup(dot(*args[:-1]), args[-1], offset),
            *inputs,
            relax.const(chain.values(every_integer=True)[0]),  # indexed by d + offset
            op=kernel,
            **kernel_params(chain.attrs),
        )
        return viewed_as(ctx, computed, chain.source, expr)

    return fold_table


def chain_end_pass(name: str, make_rule, logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    """A module pass applying ``make_rule(chain_ends(func))`` to every Relax function: rules that
    fold a float chain where it ends need those ends computed on the function before rewriting."""
    return function_rule_pass(name, lambda func: make_rule(chain_ends(func)), logs)


def fold_float_tables(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    return chain_end_pass("FoldFloatTables", table_rule, logs)
