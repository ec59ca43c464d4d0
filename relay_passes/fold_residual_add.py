"""Fold a residual add into the binary conv (or dense) whose float epilogue it finishes.

In a residual binary network (Bi-Real: ``x + BN(binary conv(sign x))``) the conv's float
epilogue (``FoldFloatEpilogues``) is followed by an ``add`` of the shortcut tensor. When the
conv's output feeds nothing else, the kernel adds the shortcut itself, after its per-channel
steps, as its last epilogue step (``residual``): one pass over the output instead of writing it,
reading it back and writing the sum. The sum is the same float32 addition (exact to reorder: it
rounds once), so results do not change.

Per-channel float ops after the residual add (ReActNet's RPReLU: subtract, PReLU, add) follow it
into the epilogue the same way, one op at a time, each rounded on its own as before.

Both look through a 1-D tensor's one-row view (``LiftConv1d``: the conv computes ``[N, C, 1, L]``,
the graph adds ``[N, C, L]``): the kernel reads the shortcut through the same kind of view and
the sum is viewed back, so a DFSMN memory block stays one kernel.

A TTQ conv's difference kernel (``b * P - a * N``, ``kernels.emit_difference``) takes them the
same way, with or without float ops before the add.

For CPU targets, after ``FoldFloatEpilogues``; says whether it changed the graph in its log.
"""

from __future__ import annotations

import tvm
from tvm import relax

from bnn_tvm.schedules import bitserial

from .analysis.chain import single_step
from .analysis.patterns import is_unit_axes_reshape
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
from .analysis.weights import DIFFERENCE
from .kernels import epilogue_steps, emit_difference, integer_dot, kernel_params

# epilogue kernel -> (the integer compute it finishes, what a note calls it)
SOURCES = {"binary_conv2d_epilogue": ("binary_conv2d", "binary conv"),
           "binary_dense_epilogue": ("binary_dense", "binary dense"),
           "ternary_conv2d_epilogue": ("ternary_conv2d", "ternary conv"),
           "ternary_dense_epilogue": ("ternary_dense", "ternary dense"),
           DIFFERENCE: (DIFFERENCE, "TTQ difference kernel")}  # b*P - a*N, steps or none


def kernel_behind_views(ctx: RuleContext, expr, uses: dict):
    """The tensor ``expr`` views through one-row views (``is_unit_axes_reshape``) read by nothing
    else, or ``expr`` itself."""
    while is_unit_axes_reshape(ctx.producer(expr)) and uses.get(expr, 0) == 1:
        expr = ctx.producer(expr).args[0]
    return expr


def same_view(a, b) -> bool:
    """Whether tensors of shapes ``a`` and ``b`` are one-row views of each other (or equal)."""
    return a[:2] == b[:2] and [d for d in a[2:] if d != 1] == [d for d in b[2:] if d != 1]


def in_shape(ctx: RuleContext, value, shape):
    """``value`` as a view of ``shape`` (itself when it has that shape)."""
    return value if shape_of(value) == tuple(shape) else ctx.builder_.emit(relax.op.reshape(value, shape), ctx.binding)


def viewed_back(ctx: RuleContext, computed, source, shape):
    """The kernel call ``computed`` (in ``source``'s shape) as a view of ``shape`` (the call
    itself when the shapes agree)."""
    if shape_of(source) == tuple(shape):
        return computed
    return relax.op.reshape(ctx.builder_.emit(computed, ctx.binding), shape)


def residual_rule(uses: dict):
    def fold(ctx: RuleContext, call):
        if op_name(call) != "relax.add":
            return None
        for viewed, shortcut in ((call.args[0], call.args[1]), (call.args[1], call.args[0])):
            conv = kernel_behind_views(ctx, viewed, uses)
            kernel = ctx.bnn_kernel(conv)
            if kernel is None or kernel[0] not in SOURCES or uses.get(conv, 0) != 1:
                continue
            steps = epilogue_steps(kernel[1])
            if (bitserial.RESIDUAL in steps or dtype_of(shortcut) != "float32"
                    or shape_of(shortcut) != shape_of(viewed) or not same_view(shape_of(conv), shape_of(viewed))):
                continue
            added = emit(ctx, conv, [in_shape(ctx, shortcut, shape_of(conv))], kernel, steps + (bitserial.RESIDUAL,),
                         f"residual add as the {SOURCES[kernel[0]][1]}'s last epilogue step")
            return viewed_back(ctx, added, conv, shape_of(call))
        return None

    return fold


def after_residual_rule(uses: dict):
    """A per-channel float op (a constant add/multiply/..., a clamp, a PReLU) on the output of a
    kernel that already added its residual, when nothing else reads that output."""

    def fold(ctx: RuleContext, call):
        found = single_step(ctx, call)
        if found is None:
            return None
        steps, viewed = found
        source = kernel_behind_views(ctx, viewed, uses)
        kernel = ctx.bnn_kernel(source)
        if (kernel is None or kernel[0] not in SOURCES or uses.get(source, 0) != 1
                or shape_of(viewed) != shape_of(call) or not same_view(shape_of(source), shape_of(call))):
            return None
        old = epilogue_steps(kernel[1])
        if bitserial.RESIDUAL not in old:
            return None
        extra = [relax.const(step.const) for step in steps]
        computed = emit(ctx, source, extra, kernel, old + tuple(step.op for step in steps),
                        f"{' + '.join(step.op for step in steps)} after the residual add, "
                        f"in the {SOURCES[kernel[0]][1]}'s epilogue")
        return viewed_back(ctx, computed, source, shape_of(call))

    return fold


def emit(ctx: RuleContext, source, operands, kernel: tuple[str, dict], steps: tuple[str, ...], note: str):
    """The epilogue ``kernel`` (name, attributes) that ``source`` is bound to, with ``operands``
    (a shortcut tensor, per-channel constants) appended for its new last ``steps``."""
    name, attrs = kernel
    inputs = ctx.kernel_inputs(source)
    ctx.fused(name, note)  # the folded node: the conv or dense keeps its line
    if name == DIFFERENCE:
        return emit_difference(ctx, *inputs, *operands, steps=steps)
    integer = SOURCES[name][0]
    count = integer_inputs(integer, attrs)
    dot = integer_dot(integer, attrs)
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
