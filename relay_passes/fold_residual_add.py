"""Fold a residual add into the binary conv whose float epilogue it finishes.

In a residual binary network (Bi-Real: ``x + BN(binary conv(sign x))``) the conv's float
epilogue (``FoldFloatEpilogues``) is followed by an ``add`` of the shortcut tensor. When the
conv's output feeds nothing else, the kernel adds the shortcut itself, after its per-channel
steps, as its last epilogue step (``residual``): one pass over the output instead of writing it,
reading it back and writing the sum. The sum is the same float32 addition (exact to reorder: it
rounds once), so results do not change.

For CPU targets, after ``FoldFloatEpilogues``; says whether it changed the graph in its log.
"""

from __future__ import annotations

import tvm
from tvm import relax

from schedules import bitserial

from .common import PassLog, RuleContext, dtype_of, function_rule_pass, op_name, shape_of
from .fold_thresholds import SCALE_INPUT, integer_dot, kernel_params

KERNEL = "binary_conv2d_epilogue"
SOURCE = "binary_conv2d"  # the integer compute the epilogue kernel finishes


def use_counts(func: relax.Function) -> dict:
    """How many times each variable of ``func`` is read (a returned variable counts as read)."""
    counts: dict = {}

    def visit(expr):
        if isinstance(expr, relax.Var):
            counts[expr] = counts.get(expr, 0) + 1

    relax.analysis.post_order_visit(func.body, visit)
    return counts


def residual_rule(uses: dict):
    def fold(ctx: RuleContext, call):
        if op_name(call) != "relax.add":
            return None
        for conv, shortcut in ((call.args[0], call.args[1]), (call.args[1], call.args[0])):
            kernel = ctx.bnn_kernel(conv)
            if kernel is None or kernel[0] != KERNEL or uses.get(conv, 0) != 1:
                continue
            steps = tuple(str(kernel[1]["bnn.epilogue"]).split(","))
            if bitserial.RESIDUAL in steps or dtype_of(shortcut) != "float32" or shape_of(shortcut) != shape_of(conv):
                continue
            return emit(ctx, conv, shortcut, kernel[1], steps + (bitserial.RESIDUAL,))
        return None

    return fold


def emit(ctx: RuleContext, conv, shortcut, attrs: dict, steps: tuple[str, ...]):
    inputs = ctx.kernel_inputs(conv)
    count = SCALE_INPUT[SOURCE]
    dot = integer_dot(SOURCE, attrs)
    ctx.fused(KERNEL, "residual add as the binary conv's last epilogue step")  # the add node: the conv keeps its line
    params = {**kernel_params(attrs), "epilogue": ",".join(steps)}
    return ctx.emit_kernel(
        lambda *args: bitserial.dot_to_float_nchw(dot(*args[:count]), *args[count:], steps=steps),
        *inputs, shortcut, op=KERNEL, **params,
    )


def fold_residual_add(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    return function_rule_pass("FoldResidualAdd", lambda func: residual_rule(use_counts(func)), logs)
