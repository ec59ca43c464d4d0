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

from bnn_tvm.schedules import bitserial

from .analysis.chain import analyse_chain, chain_ends
from .analysis.rounding import integer_inputs
from .common import PassLog, RuleContext, function_rule_pass
from .kernels import integer_dot, kernel_params, viewed_as

MAX_TABLE_ENTRIES = 1 << 18  # 1 MiB of float32 per layer


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


def fold_float_tables(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    return function_rule_pass(__name__, lambda func: table_rule(chain_ends(func)), logs)
