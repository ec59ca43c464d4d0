"""Recognisers of graph patterns the passes share: views that keep the channels (a 1-D tensor's
one-row view, a flatten, token rows), what a binary conv or dense reads, a max pool on bits, a
straight-through estimator. They read the IR; the few that return a view of a tensor (packed
rows) emit it through the rule's context.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ..common import RuleContext, op_name, shape_of


def is_unit_axes_reshape(call) -> bool:
    """Whether ``call`` reshapes ``[N, C, ...]`` only by adding or dropping axes of size 1 after
    the channel axis (a 1-D tensor's one-row 2-D view and back)."""
    if op_name(call) != "relax.reshape":
        return False
    source, target = shape_of(call.args[0]), shape_of(call)
    return (
        source[:2] == target[:2]
        and [d for d in source[2:] if d != 1] == [d for d in target[2:] if d != 1]
    )


def through_unit_axes_reshapes(ctx: RuleContext, data):
    """The tensor behind a chain of reshapes that only add or drop unit axes (a 1-D tensor's
    one-row view and back) when it has ``data``'s shape; else ``data``."""
    source = data
    while is_unit_axes_reshape(ctx.producer(source)):
        source = ctx.producer(source).args[0]
    return source if shape_of(source) == shape_of(data) else data


UNPACKED_INPUTS = ("unpack_sign", "unpack_levels", "unpack_ternary")  # bits a conv or dense can read packed


def binarized_conv_input(ctx: RuleContext, data):
    """``(packed, explicit pad or None)`` when ``data`` is binarized bits, possibly ±1-padded,
    k-bit planes (``unpack_levels``) or ternary planes (``unpack_ternary``; these two with no
    explicit pad)."""
    data = through_unit_axes_reshapes(ctx, data)
    node = ctx.producer(data)
    explicit = None
    if op_name(node) == "relax.nn.pad":
        width = [int(v) for v in node.attrs.pad_width]
        value = float(node.attrs.pad_value)
        if str(node.attrs.pad_mode) != "constant" or value not in (1.0, -1.0) or any(width[:4]):
            return None
        explicit = (value, (width[4], width[6], width[5], width[7]))  # top, left, bottom, right
        data = node.args[0]
    kernel = ctx.bnn_kernel(data)
    if kernel is None or kernel[0] not in UNPACKED_INPUTS:
        return None
    if kernel[0] != "unpack_sign" and explicit is not None:
        return None
    return ctx.kernel_inputs(data)[0], explicit


MIN_GROUP_CHANNELS = 16  # below this many input channels per group, one kernel per group costs more than a float conv


def plain_conv_reason(attrs, in_channels: int) -> str | None:
    """Why a conv with these attributes cannot be binary, or None. A grouped conv can (one
    kernel per group) when its groups have at least ``MIN_GROUP_CHANNELS`` input channels."""
    groups = int(attrs.groups)
    if groups != 1 and in_channels // groups < MIN_GROUP_CHANNELS:
        return (f"grouped conv (groups={groups}, {in_channels // groups} input channels per group; fewer than "
                f"{MIN_GROUP_CHANNELS} per group run faster as a float conv)")
    layouts = (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout))
    if layouts != ("NCHW", "OIHW", "NCHW"):
        return f"layouts {layouts}"
    return None


def flattened_source(ctx: RuleContext, data):
    """What a dense's ``[N, K]`` input ``data`` reads: the tensor a batch-keeping reshape (a
    flatten) of it views, or ``data`` itself; None when ``data`` is not 2-D or the reshape
    changes the batch."""
    if len(shape_of(data)) != 2:
        return None
    producer = ctx.producer(data)
    if op_name(producer) != "relax.reshape":
        return data
    source = producer.args[0]
    return source if shape_of(source)[0] == shape_of(data)[0] else None


def packed_features(ctx: RuleContext, data):
    """``(packed words [N, KW], spatial shape (C, H, W) or (C,))`` feeding a dense, or None."""
    source = flattened_source(ctx, data)
    if source is None:
        return None
    if source is not data:
        if len(shape_of(source)) != 4:
            return None
        kernel = ctx.bnn_kernel(source)
        if kernel is None or kernel[0] != "unpack_sign":
            return None
        packed = ctx.kernel_inputs(source)[0]
        n = shape_of(packed)[0]
        flat = ctx.builder_.emit(relax.op.reshape(packed, (n, int(np.prod(shape_of(packed)[1:])))))
        return flat, shape_of(source)[1:]
    kernel = ctx.bnn_kernel(data)
    if kernel is None or kernel[0] not in ("unpack_sign", "unpack_ternary"):
        return None
    return ctx.kernel_inputs(data)[0], shape_of(data)[1:]


def before_flatten(ctx: RuleContext, x):
    """``(t, flat_shape)``: ``x`` as the NCHW or NCW tensor ``t`` a flatten made it from and
    ``x``'s shape, or ``(x, None)``. Binarizing commutes with a flatten: binarize ``t``, so the
    producer's batch norm can fold into a threshold and the bits stay channel-packed, and
    flatten the unpacked view."""
    source = flattened_source(ctx, x)  # x itself unless x is the flatten of an NCHW or NCW tensor
    if source is not None and source is not x and len(shape_of(source)) in (3, 4):
        return source, shape_of(x)
    return x, None


def token_rows(ctx: RuleContext, expr):
    """The ``[N*T, C]`` rows that the ``[N, T, C]`` tensor ``expr`` is a reshaped view of, or None."""
    producer = ctx.producer(expr)
    if op_name(producer) != "relax.reshape":
        return None
    rows, tokens = producer.args[0], shape_of(expr)
    shape = shape_of(rows)
    return rows if len(shape) == 2 and len(tokens) == 3 and shape == (tokens[0] * tokens[1], tokens[2]) else None


def or_pool_refusal(call) -> str | None:
    """Why the max pool ``call`` cannot run as an OR on packed bits, or None if it can."""
    attrs = call.attrs
    if any(int(d) != 1 for d in attrs.dilation) or str(attrs.layout) != "NCHW" or str(attrs.out_layout) != "NCHW":
        return "dilated or non-NCHW max pool"
    return None


def points_max_rows(ctx: RuleContext, node):
    """The ``[B*N, C]`` rows whose ``[B, N, C]`` view ``node`` (a call) takes the max over the
    points of (``max(view, axis=1)``), or None."""
    if op_name(node) != "relax.max" or bool(node.attrs.keepdims) or node.attrs.axis is None:
        return None
    if [int(a) for a in node.attrs.axis] not in ([1], [-2]):
        return None
    view = ctx.producer(node.args[0])
    if op_name(view) != "relax.reshape" or len(shape_of(node.args[0])) != 3:
        return None
    rows = view.args[0]
    b, n, c = shape_of(node.args[0])
    return rows if shape_of(rows) == (b * n, c) else None


def estimator_parts(ctx: RuleContext, call):
    """``(S, P, subtraction)`` when ``call`` is ``(S - P) + P`` or ``P + (S - P)`` with ``S`` a
    ``Sign``, else None."""
    if op_name(call) != "relax.add":
        return None
    for difference, other in ((call.args[0], call.args[1]), (call.args[1], call.args[0])):
        sub = ctx.producer(difference)
        if op_name(sub) == "relax.subtract" and op_name(ctx.producer(sub.args[0])) == "relax.sign":
            if sub.args[1].same_as(other):
                return sub.args[0], other, difference
    return None


def scaled_estimator_parts(ctx: RuleContext, call):
    """``(M, S, P, subtraction)`` when ``call`` is ``(M - P) + P`` or ``P + (M - P)`` with
    ``M = beta * S`` (either order) and ``S`` a ``Sign`` (XNOR-Net's scaled estimator), else None."""
    if op_name(call) != "relax.add":
        return None
    for difference, other in ((call.args[0], call.args[1]), (call.args[1], call.args[0])):
        sub = ctx.producer(difference)
        if op_name(sub) != "relax.subtract" or not sub.args[1].same_as(other):
            continue
        scaled = ctx.producer(sub.args[0])
        if op_name(scaled) != "relax.multiply":
            continue
        for sign in scaled.args:
            if op_name(ctx.producer(sign)) == "relax.sign":
                return sub.args[0], sign, other, difference
    return None
