"""Fold the float ops after a binary conv/dense into the kernel, as its float epilogue.

A binary conv/dense produces an integer ``d``; the weight scale, bias, batch norm or scale after
it are per-channel float ops on ``float(d)``. Where that chain ends in a float consumer (a graph
output, a residual add, a float layer), the kernel computes it itself on its register tile:
each op in float32, in ONNX Runtime's order (batch norm as ``d * s + (beta - mean * s)``), each
rounded on its own (``schedules.bitserial.apply_epilogue`` keeps LLVM from fusing a multiply and
an add into one FMA). The result is bit-identical to the reference, at no size limit and
without a separate pass over the output.

A constant that varies along the output's rows or columns (XNOR++'s ``y * o_scale * h_scale *
w_scale``, scales ``[1, C, 1, 1]``, ``[1, 1, H, 1]``, ``[1, 1, 1, W]``) is a positional step of
the same epilogue (``bitserial.positional_step``): the kernel reads the constant at each output's
position and applies the ops in the graph's order, each rounded on its own, so the output stays
bit-identical; the batch norm and clamp after the scales follow them in. (A binarizer after such
a chain is not folded into integer thresholds: its decisions would differ per position.)

The float convs of the network (stem, downsampling shortcuts) get their bias and batch norm as
an epilogue the same way (``schedules.float_conv``), and so does the difference kernel of a
TTQ conv (``b * P - a * N``, ``kernels.emit_difference``).

For LLVM targets (CPUs); ``FoldFloatTables`` does the same with lookup tables for the rest
(CUDA, k-bit inputs).
"""

from __future__ import annotations

import tvm
from tvm import relax

from bnn_tvm.schedules import bitserial, float_conv

from .analysis.chain import Step, analyse_chain, chain_ends, trace_chain
from .analysis.rounding import integer_inputs
from .common import PassLog, RuleContext, either_rule, function_rule_pass
from .analysis.weights import DIFFERENCE
from .kernels import epilogue_steps, emit_difference, integer_dot, kernel_params, viewed_as

EPILOGUE_KERNELS = {name: f"{name}_epilogue" for name in ("binary_conv2d", "binary_dense", "ternary_conv2d", "ternary_dense")}


def epilogue_rule(ends: set[str]):
    def fold_epilogue(ctx: RuleContext, expr):
        if ctx.binding not in ends or ctx.bnn_kernel(expr) is not None:
            return None
        chain = analyse_chain(ctx, expr, positional_consts=True)
        if chain is None or not chain.steps or chain.name not in EPILOGUE_KERNELS:
            return None
        # a scale that is not a power of two: the kernel's alpha * d is the value the unfused graph
        # would pass on too, so the epilogue is as close to the float graph's as the float ops
        steps = ([Step("multiply", chain.scale)] if chain.scale is not None else []) + list(chain.steps)
        ops = tuple(step.epilogue for step in steps)
        inputs = ctx.kernel_inputs(chain.source)[: integer_inputs(chain.name, chain.attrs)]
        dot = integer_dot(chain.name, chain.attrs)
        kernel = EPILOGUE_KERNELS[chain.name]
        ctx.fused(kernel, f"{chain.name} + {len(chain.steps)} float op(s) in its epilogue", *chain.visited[1:])
        count = len(inputs)
        computed = ctx.emit_kernel(
            lambda *args: bitserial.dot_to_float_nchw(dot(*args[:count]), *args[count:], steps=ops),
            *inputs,
            *(relax.const(step.const) for step in steps),
            op=kernel,
            epilogue=",".join(ops),
            **kernel_params(chain.attrs),
        )
        return viewed_as(ctx, computed, chain.source, expr)

    return fold_epilogue


def traced_ops(ctx: RuleContext, expr, ends: set[str], is_source):
    """``(source, steps, visited)``: the float ops from a kernel that ``is_source`` accepts up to
    ``expr``, where ``expr`` ends a chain and at least one op lies between; else None."""
    if ctx.binding not in ends:
        return None
    traced = trace_chain(ctx, expr, is_source=is_source)
    return traced if traced is not None and traced[1] else None


def is_plain_difference(ctx: RuleContext, expr) -> bool:
    """A TTQ conv's ``b * P - a * N`` kernel without steps yet (``kernels.emit_difference``)."""
    found = ctx.bnn_kernel(expr)
    return found is not None and found[0] == DIFFERENCE and not epilogue_steps(found[1])


def difference_rule(ends: set[str]):
    """The float ops after a TTQ conv's ``b * P - a * N`` (its batch norm, a scale) as the
    difference kernel's epilogue, each rounded on its own as the graph's ops."""

    def fold_difference_epilogue(ctx: RuleContext, expr):
        traced = traced_ops(ctx, expr, ends, is_plain_difference)
        if traced is None:
            return None
        source, steps, visited = traced
        # the float ops (the conv keeps its line)
        ctx.fused(DIFFERENCE, f"TTQ conv's b*P - a*N + {len(steps)} float op(s) in its epilogue", *visited[1:-1])
        computed = emit_difference(ctx, *ctx.kernel_inputs(source), *(relax.const(step.const) for step in steps),
                                   steps=tuple(step.op for step in steps))
        return viewed_as(ctx, computed, source, expr)

    return fold_difference_epilogue


def is_float_conv(ctx: RuleContext, expr) -> bool:
    """A plain float conv with constant weights: ``schedules.float_conv`` can compute it."""
    call = ctx.producer(expr)
    return (
        isinstance(call, relax.Call)
        and call.op == tvm.ir.Op.get("relax.nn.conv2d")
        and float_conv.plain_float_conv(call)
        and float_conv.constant_weight(call, ctx.lookup_binding) is not None
    )


def float_conv_rule(ends: set[str], across_rows: bool = False):
    """The same for the float convs of a binarized network (the stem, downsampling shortcuts):
    their bias and batch norm become the conv kernel's epilogue, in the reference's order."""

    def fold_conv_epilogue(ctx: RuleContext, expr):
        traced = traced_ops(ctx, expr, ends, is_float_conv)
        if traced is None:
            return None
        source, steps, visited = traced
        conv = ctx.producer(source)
        strides = tuple(int(v) for v in conv.attrs.strides)
        padding = tuple(int(v) for v in conv.attrs.padding)
        ops = tuple(step.op for step in steps)
        ctx.fused(float_conv.FLOAT_CONV, f"float conv + {len(steps)} float op(s) in its epilogue", *visited[1:])
        computed = ctx.emit_kernel(
            lambda d, w, *cs: float_conv.float_conv2d(d, w, strides, padding, *cs, steps=ops, across_rows=across_rows),
            conv.args[0],
            float_conv.constant_weight(conv, ctx.lookup_binding),
            *(relax.const(step.const) for step in steps),
            op=float_conv.FLOAT_CONV,
            epilogue=",".join(ops),
            strides=list(strides),
            padding=list(padding),
        )
        return viewed_as(ctx, computed, source, expr)

    return fold_conv_epilogue


def fold_float_epilogues(logs: list[PassLog] | None = None, across_rows: bool = False) -> tvm.transform.Pass:
    """``across_rows``: the float convs' kernels as ``float_conv.float_conv2d`` takes it (the
    target family's choice, ``float_conv.ACROSS_ROWS_FAMILIES``)."""

    def make_rule(func):
        ends = chain_ends(func)
        # the binary kernels' epilogues read positional constants too; the float convs' and the
        # difference kernel's per-channel ones only
        return either_rule(epilogue_rule(chain_ends(func, positional_consts=True)), difference_rule(ends),
                           float_conv_rule(ends, across_rows))

    return function_rule_pass(__name__, make_rule, logs)
