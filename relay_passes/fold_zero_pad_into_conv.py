"""Fold an explicit zero ``Pad`` around a ``Sign`` into the conv that reads it.

``Sign(Pad(x, 0)) = Pad(Sign(x), 0)`` since ``Sign(0) = 0``, and a zero ``Pad`` before a conv is the
conv's own zero padding: ``conv(Sign(Pad(x, 0)), W, p) = conv(Sign(x), W, p + pad)``, exactly.
A 1-D conv that ``LiftConv1d`` computed over a one-row view (DFSMN's memory blocks ``F.pad``
their frames) reads ``view(Sign(Pad(x, 0)))`` with the pad on the frames: the same fold, with
the one-row view of ``Sign(x)``. The pass therefore runs after the lifts; ``LiftTokenMatmul``
would otherwise move the unpadded ``Sign`` of a transposed token tensor onto its rows, away
from the conv.
The conv on ``Sign(x)`` then becomes a binary kernel like any other (its border correction is
exact for zero padding). Exporters write the pad explicitly where a model calls ``F.pad`` before
its binarizer, or for asymmetric padding.

A *binarizer* of a zero-padded tensor is not the same thing: ``x >= 0`` sends the padded zeros
to +1, which ``FuseBinaryConv2d`` handles as an explicit ±1 pad of its own.
"""

from __future__ import annotations

import tvm
from tvm import relax

from .analysis.patterns import is_unit_axes_reshape
from .common import PassLog, RuleContext, conv2d_like, op_name, rule_pass, shape_of

ZERO_PAD = "zero_pad_into_conv"  # inspect: a Pad (and Sign) that became the conv's own padding


def zero_spatial_pad(node) -> tuple[int, int, int, int] | None:
    """``(top, left, bottom, right)`` of a constant-0 ``pad`` of the two spatial axes of NCHW."""
    if op_name(node) != "relax.nn.pad" or str(node.attrs.pad_mode) != "constant" or float(node.attrs.pad_value) != 0:
        return None
    width = [int(v) for v in node.attrs.pad_width]  # before, after per axis
    if len(width) != 8 or any(width[:4]) or min(width) < 0:
        return None
    return width[4], width[6], width[5], width[7]


def frame_pad(node) -> tuple[int, int] | None:
    """``(left, right)`` of a constant-0 ``pad`` of the last axis of an NCW tensor only."""
    if op_name(node) != "relax.nn.pad" or str(node.attrs.pad_mode) != "constant" or float(node.attrs.pad_value) != 0:
        return None
    width = [int(v) for v in node.attrs.pad_width]
    if len(width) != 6 or any(width[:4]) or min(width) < 0:
        return None
    return width[4], width[5]


def padded_row_sign(ctx: RuleContext, data):
    """``(one-row view of Sign(x), pad, names)`` when ``data`` is the ``[N, C, 1, L]`` view of
    ``Sign(Pad(x, 0))`` padded on the frames (``pad``: the conv padding ``(0, left, 0, right)``,
    ``names``: the variables between), else None."""
    view = ctx.producer(data)
    if not is_unit_axes_reshape(view) or len(shape_of(view)) != 4 or shape_of(view)[2] != 1:
        return None
    sign = ctx.producer(view.args[0])
    if op_name(sign) != "relax.sign":
        return None
    pad = frame_pad(ctx.producer(sign.args[0]))
    if pad is None:
        return None
    x = ctx.producer(sign.args[0]).args[0]
    n, c, length = shape_of(x)
    unpadded = ctx.builder_.emit(relax.op.sign(x), "unpadded_sign")
    row = ctx.builder_.emit(relax.op.reshape(unpadded, [n, c, 1, length]), "unpadded_row")
    return row, (0, pad[0], 0, pad[1]), (view.args[0], sign.args[0]), unpadded


def padded_sign(ctx: RuleContext, data):
    """``(x, pad, inner)`` when ``data`` is ``Sign(Pad(x, 0))`` or ``Pad(Sign(x), 0)`` (``inner``:
    the variable between the two), else None."""
    node = ctx.producer(data)
    if op_name(node) == "relax.sign":
        inner = ctx.producer(node.args[0])
        pad = zero_spatial_pad(inner)
        return None if pad is None else (inner.args[0], pad, node.args[0])
    pad = zero_spatial_pad(node)
    if pad is not None and op_name(ctx.producer(node.args[0])) == "relax.sign":
        return ctx.producer(node.args[0]).args[0], pad, node.args[0]
    return None


def rewrite(ctx: RuleContext, call):
    if op_name(call) != "relax.nn.conv2d" or str(call.attrs.data_layout) != "NCHW":
        return None
    found = padded_sign(ctx, call.args[0])
    if found is not None:
        x, pad, inner = found
        sign = data = ctx.builder_.emit(relax.op.sign(x), "unpadded_sign")
        between = (call.args[0], inner)
    else:
        found = padded_row_sign(ctx, call.args[0])
        if found is None:
            return None
        # not the view itself: LiftConv1d credits it to the conv's own ONNX node
        data, pad, between, sign = found
    padding = [int(p) + extra for p, extra in zip(call.attrs.padding, pad)]
    names = [v for v in between if isinstance(v, relax.Var)]
    ctx.alias(tuple(v.name for v in names), sign)
    ctx.fused(ZERO_PAD, f"zero Pad {list(pad)} around the Sign folded into the conv's padding", *names)
    return conv2d_like(call, data, padding)


def fold_zero_pad_into_conv(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    return rule_pass(__name__, rewrite, logs)
