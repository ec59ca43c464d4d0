"""Run a conv or dense on ``Sign(x)`` of a float tensor as a ternary one: sign and nonzero planes.

``Sign(0) = 0`` is a third value no single bit holds, so ``lower_sign`` keeps a ``Sign`` float
unless it provably never sees 0. Here such a ``Sign`` becomes two bit planes (``pack_ternary``:
bit set where ``x > 0``, and where ``x != 0``), and the conv or dense reading it a ternary kernel
(``ternary_conv2d_dot``): ``dot = nonzeros - 2 * popcount((s XOR w) AND m)``, one AND per word
more than a binary kernel. Zero padding stays exact (a 0 in both planes).

A grouped conv keeps the older form: ``Sign(x) = (b(x) - b(-x)) / 2`` exactly, with the bipolar
binarizer ``b(v) = +1 if v >= 0 else -1``, so

    conv(Sign(x), W) = conv([b(x), b(-x)], [W, -W]) / 2

with the halves side by side along each group's input channels: one XNOR-popcount conv over 2C
channels, at twice the binary cost. The halving is exact in float32.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from bnn_tvm.schedules import bitserial

from .analysis.chain import trace_chain
from .analysis.patterns import (
    before_flatten,
    binarized_conv_input,
    estimator_parts,
    flattened_source,
    is_unit_axes_reshape,
    packed_features,
    plain_conv_reason,
)
from .analysis.weights import split_asymmetric, split_scale
from .common import PassLog, RuleContext, dtype_of, op_name, rule_pass, shape_of


def sign_input(ctx: RuleContext, data):
    """``x`` when ``data`` is ``Sign(x)`` of a float32 NCHW or [N, C] tensor, or a one-row view
    of ``Sign(x)`` on a 1-D conv's ``[N, C, L]`` input (``lift_conv1d``; ``x`` then has that
    shape: ``viewed_input`` gives the view), else None."""
    node = ctx.producer(data)
    if is_unit_axes_reshape(node) and op_name(ctx.producer(node.args[0])) == "relax.sign":
        node = ctx.producer(node.args[0])
    if op_name(node) != "relax.sign":
        return None
    x = node.args[0]
    return x if len(shape_of(x)) in (2, 3, 4) and dtype_of(x) == "float32" else None


def sign_of(ctx: RuleContext, data):
    """The ``Sign`` binding that ``data`` is, or views (its node is the binarized ONNX tensor)."""
    node = ctx.producer(data)
    return node.args[0] if is_unit_axes_reshape(node) else data


def viewed_input(ctx: RuleContext, x, data):
    """``x`` in the shape of the conv's input ``data`` (a 1-D conv's row view)."""
    return x if shape_of(x) == shape_of(data) else ctx.builder_.emit(relax.op.reshape(x, shape_of(data)), "row")


def paired_bits(ctx: RuleContext, sign_var, x, groups: int):
    """``[b(x), b(-x)]`` (per group) as unpacked ±1 values over 2C channels, packed once."""
    packed = ctx.builder_.emit(
        ctx.emit_kernel(lambda t: bitserial.pack_sign(t, pair_groups=groups), x, op="pack_sign_pair",
                        pair_groups=groups),
        ctx.logged_name("packed_pair"),
    )
    ctx.fused("pack_sign_pair", f"Sign on {shape_of(x)} as two bipolar halves (its zeros exact)", sign_var, packed)
    channels = 2 * shape_of(x)[1]
    return ctx.builder_.emit(
        ctx.emit_kernel(lambda p: bitserial.unpack_sign(p, channels), packed, op="unpack_sign", channels=channels),
        "unpacked_pair",
    )


def ternary_bits(ctx: RuleContext, sign_var, x):
    """``Sign(x)`` as ``unpack_ternary(pack_ternary(x))``: the planes a conv or dense reads packed."""
    planes = ctx.builder_.emit(ctx.emit_kernel(bitserial.pack_ternary, x, op="pack_ternary"),
                               ctx.logged_name("ternary_planes"))
    ctx.fused("pack_ternary", f"Sign on {shape_of(x)} as sign and nonzero planes (its zeros exact)", sign_var, planes)
    channels = shape_of(x)[1]
    return ctx.builder_.emit(
        ctx.emit_kernel(lambda p: bitserial.unpack_ternary(p, channels), planes, op="unpack_ternary",
                        channels=channels),
        "unpacked_ternary",
    )


def straight_through_estimator(ctx: RuleContext, data) -> bool:
    """Whether ``data`` is a straight-through estimator ``(Sign(x) - p) + p`` that
    ``LowerStraightThrough`` could not prove equal to ``Sign(x)`` (its node says why)."""
    return estimator_parts(ctx, ctx.producer(data)) is not None


STE_NOTE = "input is a straight-through estimator (sign(x) - p) + p not proven equal to sign(x) (its Add node says why)"


def conv_operands(ctx: RuleContext, call):
    """``(x, W)`` when ``call`` is a plain conv of ``Sign(x)`` with constant ±alpha (or 0)
    weights, or, ungrouped, TTQ's ``{-a, 0, +b}`` (``fuse_binary_conv2d`` runs both), else None."""
    data, weight_expr = call.args
    x = sign_input(ctx, data)
    if x is None or plain_conv_reason(call.attrs, shape_of(x)[1]) is not None:
        return None  # before the weights are copied out: every round asks this of every conv
    weight = ctx.constant(weight_expr)
    if weight is None:
        return None
    if not isinstance(split_scale(weight, ternary=True), str):
        return x, weight
    asymmetric = int(call.attrs.groups) == 1 and not isinstance(split_asymmetric(weight), str)
    return (x, weight) if asymmetric else None


def dense_operands(ctx: RuleContext, call):
    """``(source, x, W)`` when ``call`` is a matmul of a (flattened) ``Sign(x)`` with constant
    ±alpha (or 0) weights ``[K, O]``, or TTQ's ``{-a, 0, +b}``, else None."""
    data, weight_expr = call.args
    source = flattened_source(ctx, data)
    x = None if source is None else sign_input(ctx, source)
    if x is None:
        return None  # before the weights are copied out, as for a conv
    weight = ctx.constant(weight_expr)
    if weight is None or weight.ndim != 2:
        return None
    if isinstance(split_scale(weight.T, ternary=True), str) and isinstance(split_asymmetric(weight.T), str):
        return None
    return source, x, weight


def becomes_binary(ctx: RuleContext, expr) -> bool:
    """Whether ``expr`` is a conv or dense that this round makes a binary kernel: on binarized
    bits (the fusions after this pass) or on a ``Sign`` this pass splits."""
    node = ctx.producer(expr)
    name = op_name(node)
    if name == "relax.nn.conv2d":
        return binarized_conv_input(ctx, node.args[0]) is not None or conv_operands(ctx, node) is not None
    if name == "relax.matmul":
        return packed_features(ctx, node.args[0]) is not None or dense_operands(ctx, node) is not None
    return False


def waits_for_a_fusion(ctx: RuleContext, x) -> bool:
    """Whether ``x`` is a per-channel float chain (across at most one max pool and a flatten)
    of a layer that becomes a binary kernel in this round. Then ``LowerSign`` may prove, next
    round, that this ``Sign`` never sees 0 (BinaryNet's torch.sign after BN and Hardtanh), and
    the layer after it runs at the plain binary cost instead of twice it."""
    return trace_chain(ctx, before_flatten(ctx, x)[0], is_source=becomes_binary, pools=[]) is not None


def split_conv(ctx: RuleContext, call, wait: bool):
    if straight_through_estimator(ctx, call.args[0]):
        ctx.keep_float(STE_NOTE)
        return None
    operands = conv_operands(ctx, call)
    if operands is None or (wait and waits_for_a_fusion(ctx, operands[0])):
        return None
    x, weight = operands
    attrs = call.attrs
    if int(attrs.groups) == 1:
        conv = ctx.builder_.emit(relax.op.nn.conv2d(
            ternary_bits(ctx, sign_of(ctx, call.args[0]), viewed_input(ctx, x, call.args[0])), call.args[1], strides=attrs.strides, padding=attrs.padding,
            dilation=attrs.dilation,
        ), ctx.logged_name("ternary_conv"))
        ctx.alias((ctx.binding,), conv)  # fused in the next pass: credited to this conv's node
        return conv
    paired = np.concatenate([weight, -weight], axis=1)  # per group: [W_g, -W_g] over [x_g, -x_g]
    conv = ctx.builder_.emit(relax.op.nn.conv2d(
        paired_bits(ctx, sign_of(ctx, call.args[0]), viewed_input(ctx, x, call.args[0]), int(attrs.groups)), relax.const(paired.astype(np.float32)),
        strides=attrs.strides, padding=attrs.padding, dilation=attrs.dilation, groups=attrs.groups,
    ), ctx.logged_name("paired_conv"))
    ctx.alias((ctx.binding,), conv)  # fused in the next pass: credited to this conv's node
    return relax.op.multiply(conv, relax.const(np.float32(0.5)))


def split_dense(ctx: RuleContext, call, wait: bool):
    data = call.args[0]
    viewed = ctx.producer(data)  # the estimator is named whatever the matmul's shape
    if straight_through_estimator(ctx, viewed.args[0] if op_name(viewed) == "relax.reshape" else data):
        ctx.keep_float(STE_NOTE)
        return None
    operands = dense_operands(ctx, call)
    if operands is None or (wait and waits_for_a_fusion(ctx, operands[1])):
        return None
    source, x, _ = operands
    # a flatten of Sign(x) is Sign of x's flatten: the planes are packed along the features
    flat = x if len(shape_of(x)) == 2 else ctx.builder_.emit(relax.op.reshape(x, shape_of(data)), "flat")
    product = ctx.builder_.emit(relax.op.matmul(ternary_bits(ctx, source, flat), call.args[1]),
                                ctx.logged_name("ternary_dense"))
    ctx.alias((ctx.binding,), product)
    return product


def split_ternary_sign(logs: list[PassLog] | None = None, wait: bool = True) -> tvm.transform.Pass:
    """The pass; ``wait``: leave a ``Sign`` whose input ``waits_for_a_fusion`` for a later round."""

    def rule(ctx: RuleContext, call):
        name = op_name(call)
        if name == "relax.nn.conv2d":
            return split_conv(ctx, call, wait)
        if name == "relax.matmul":
            return split_dense(ctx, call, wait)
        return None

    return rule_pass(__name__, rule, logs)
