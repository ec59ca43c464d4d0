"""Apply a per-channel float op after a channel concat to each concatenated part instead.

ReActNet's reduction block doubles the channels by concatenating two binary 1x1 convs, each
plus the shortcut, and applies its RPReLU (subtract, PReLU, add) to the concatenation:
``rprelu(concat(bn(conv_a(s)) + y, bn(conv_b(s)) + y))``. Elementwise, that is
``concat(rprelu_a(...), rprelu_b(...))`` with each part's slice of the per-channel constants:
the same float32 op on the same values, so results do not change. Each part then ends in its
own kernel's output, and ``FoldResidualAdd`` moves the residual add and the ops after it into
that kernel's epilogue instead of a float pass over the concatenated tensor per op.

Only when the concat feeds nothing else (otherwise it would be computed anyway) and each part
feeds nothing but the concat (a part read elsewhere, such as a DenseNet layer's output that every
later layer reads, keeps its kernel's plain output: folding the op into the kernel would compute
it twice, and the split would only add kernels). For CPU
targets, before ``FoldFloatEpilogues`` (a part that is a binary conv takes the op into its
epilogue) and ``FoldResidualAdd``; says whether it changed the graph in its log.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .analysis.chain import single_step
from .common import PassLog, RuleContext, function_rule_pass, op_name, shape_of, use_counts

SPLIT = "per_concat_part"  # the rewrite's name in the pass log: the op stays float, per part


def channel_slice(ctx: RuleContext, call, arg, rank: int, channels: int, start: int, stop: int):
    """``arg`` for the output channels ``start:stop``: a constant that varies along the channel
    axis sliced there (a PReLU slope is 1-D along it, other constants broadcast from the right);
    anything else as it is."""
    values = ctx.constant(arg)
    if values is None:
        return arg
    axis = 0 if op_name(call) == "relax.nn.prelu" else values.ndim - (rank - 1)
    if axis < 0 or values.shape[axis] != channels:
        return arg
    return relax.const(np.take(values, range(start, stop), axis=axis))


def split_rule(uses: dict):
    def split(ctx: RuleContext, call):
        found = single_step(ctx, call)
        if found is None:
            return None
        source = found[1]
        if uses.get(source, 0) != 1 or shape_of(source) != shape_of(call):
            return None
        concat = ctx.producer(source)
        rank = len(shape_of(call))
        if op_name(concat) != "relax.concat" or int(concat.attrs.axis) % rank != 1:
            return None
        parts = ctx.producer(concat.args[0])
        if not isinstance(parts, relax.Tuple):
            return None
        # (a part this pass emitted, for the op before, has no count: the new concat reads it alone)
        if any(uses.get(part, 1) != 1 for part in parts.fields):
            return None  # a part read elsewhere keeps its kernel's output: the op could not fold into it
        channels, start, split_parts = shape_of(call)[1], 0, []
        for part in parts.fields:
            stop = start + shape_of(part)[1]
            args = [part if arg.same_as(source) else channel_slice(ctx, call, arg, rank, channels, start, stop)
                    for arg in call.args]
            split_parts.append(ctx.builder_.emit(relax.Call(call.op, args, call.attrs), ctx.binding))
            start = stop
        ctx.alias((ctx.binding,), *split_parts)
        ctx.fused(SPLIT, f"{op_name(call).split('.')[-1]} applied to each of the {len(split_parts)} concatenated parts")
        return relax.op.concat(split_parts, axis=1)

    return split


def split_channel_ops_over_concat(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    return function_rule_pass(__name__, lambda func: split_rule(use_counts(func)), logs)
