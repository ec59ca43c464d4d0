"""Fold an explicit zero ``Pad`` around a ``Sign`` into the conv that reads it.

``Sign(Pad(x, 0)) = Pad(Sign(x), 0)`` since ``Sign(0) = 0``, and a zero ``Pad`` before a conv is the
conv's own zero padding: ``conv(Sign(Pad(x, 0)), W, p) = conv(Sign(x), W, p + pad)``, exactly.
The conv on ``Sign(x)`` then becomes a binary kernel like any other (its border correction is
exact for zero padding). Exporters write the pad explicitly where a model calls ``F.pad`` before
its binarizer, or for asymmetric padding.

A *binarizer* of a zero-padded tensor is not the same thing: ``x >= 0`` sends the padded zeros
to +1, which ``FuseBinaryConv2d`` handles as an explicit ±1 pad of its own.
"""

from __future__ import annotations

import tvm
from tvm import relax

from .common import PassLog, RuleContext, conv2d_like, op_name, rule_pass

ZERO_PAD = "zero_pad_into_conv"  # inspect: a Pad (and Sign) that became the conv's own padding


def zero_spatial_pad(node) -> tuple[int, int, int, int] | None:
    """``(top, left, bottom, right)`` of a constant-0 ``pad`` of the two spatial axes of NCHW."""
    if op_name(node) != "relax.nn.pad" or str(node.attrs.pad_mode) != "constant" or float(node.attrs.pad_value) != 0:
        return None
    width = [int(v) for v in node.attrs.pad_width]  # before, after per axis
    if len(width) != 8 or any(width[:4]) or min(width) < 0:
        return None
    return width[4], width[6], width[5], width[7]


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
    if found is None:
        return None
    x, pad, inner = found
    padding = [int(p) + extra for p, extra in zip(call.attrs.padding, pad)]
    sign = ctx.builder_.emit(relax.op.sign(x), "unpadded_sign")
    names = [v for v in (call.args[0], inner) if isinstance(v, relax.Var)]
    ctx.alias(tuple(v.name for v in names), sign)
    ctx.fused(ZERO_PAD, f"zero Pad {list(pad)} around the Sign folded into the conv's padding", *names)
    return conv2d_like(call, sign, padding)


def fold_zero_pad_into_conv(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    return rule_pass(__name__, rewrite, logs)
