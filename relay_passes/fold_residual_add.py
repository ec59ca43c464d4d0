"""Fold a residual add into the binary conv (or dense) whose float epilogue it finishes.

In a residual binary network (Bi-Real: ``x + BN(binary conv(sign x))``) the conv's float
epilogue (``FoldFloatEpilogues``) is followed by an ``add`` of the shortcut tensor. When the
conv's output feeds nothing else, the kernel adds the shortcut itself, after its per-channel
steps, as its last epilogue step (``residual``): one pass over the output instead of writing it,
reading it back and writing the sum. The sum is the same float32 addition (exact to reorder: it
rounds once), so results do not change.

Per-channel float ops after the residual add (ReActNet's RPReLU: subtract, PReLU, add) follow it
into the epilogue the same way, one op at a time, each rounded on its own as before.

For CPU targets, after ``FoldFloatEpilogues``; says whether it changed the graph in its log.
"""

from __future__ import annotations

import tvm
from tvm import relax

from bnn_tvm.schedules import bitserial

from .analysis.chain import single_step
from .analysis.rounding import integer_inputs
from .common import (
    PassLog,
    RuleContext,
    dtype_of,
    either_rule,
    function_rule_pass,
    op_name,
    shape_of,
    use_counts,
)
from .kernels import integer_dot, kernel_params

# epilogue kernel -> (the integer compute it finishes, what a note calls it)
SOURCES = {"binary_conv2d_epilogue": ("binary_conv2d", "binary conv"),
           "binary_dense_epilogue": ("binary_dense", "binary dense"),
           "ternary_conv2d_epilogue": ("ternary_conv2d", "ternary conv"),
           "ternary_dense_epilogue": ("ternary_dense", "ternary dense")}


def residual_rule(uses: dict):
    def fold(ctx: RuleContext, call):
        if op_name(call) != "relax.add":
            return None
        for conv, shortcut in ((call.args[0], call.args[1]), (call.args[1], call.args[0])):
            kernel = ctx.bnn_kernel(conv)
            if kernel is None or kernel[0] not in SOURCES or uses.get(conv, 0) != 1:
                continue
            steps = tuple(str(kernel[1]["bnn.epilogue"]).split(","))
            if bitserial.RESIDUAL in steps or dtype_of(shortcut) != "float32" or shape_of(shortcut) != shape_of(conv):
                continue
            return emit(ctx, conv, [shortcut], kernel, steps + (bitserial.RESIDUAL,),
                        f"residual add as the {SOURCES[kernel[0]][1]}'s last epilogue step")
        return None

    return fold


def after_residual_rule(uses: dict):
    """A per-channel float op (a constant add/multiply/..., a clamp, a PReLU) on the output of a
    kernel that already added its residual, when nothing else reads that output."""

    def fold(ctx: RuleContext, call):
        found = single_step(ctx, call)
        if found is None:
            return None
        steps, source = found
        kernel = ctx.bnn_kernel(source)
        if kernel is None or kernel[0] not in SOURCES or uses.get(source, 0) != 1 or shape_of(source) != shape_of(call):
            return None
        old = tuple(str(kernel[1]["bnn.epilogue"]).split(","))
        if bitserial.RESIDUAL not in old:
            return None
        extra = [relax.const(step.const) for step in steps]
        return emit(ctx, source, extra, kernel, old + tuple(step.op for step in steps),
                    f"{' + '.join(step.op for step in steps)} after the residual add, "
                    f"in the {SOURCES[kernel[0]][1]}'s epilogue")

    return fold


def emit(ctx: RuleContext, source, operands, kernel: tuple[str, dict], steps: tuple[str, ...], note: str):
    """The epilogue ``kernel`` (name, attributes) that ``source`` is bound to, with ``operands``
    (a shortcut tensor, per-channel constants) appended for its new last ``steps``."""
    name, attrs = kernel
    integer = SOURCES[name][0]
    inputs = ctx.kernel_inputs(source)
    count = integer_inputs(integer, attrs)
    dot = integer_dot(integer, attrs)
    ctx.fused(name, note)  # the folded node: the conv or dense keeps its line
    params = {**kernel_params(attrs), "epilogue": ",".join(steps)}
    return ctx.emit_kernel(
        lambda *args: bitserial.dot_to_float_nchw(dot(*args[:count]), *args[count:], steps=steps),
        *inputs, *operands, op=name, **params,
    )


def fold_residual_add(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    def rules(func):
        uses = use_counts(func)
        return either_rule(residual_rule(uses), after_residual_rule(uses))

    return function_rule_pass(__name__, rules, logs)
