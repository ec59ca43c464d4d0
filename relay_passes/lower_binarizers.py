"""Rewrite a binarizer into ``unpack(pack(x))``: the binary value is now a bit.

The graph still computes the same tensor (the unpack restores it), but later passes see the
packed bits and feed them to binary kernels directly. Recognised forms, all meaning
``x >= 0 -> +1, else -1`` exactly:

* ``where(x >= 0, 1, -1)`` (this project's export, QONNX ``BipolarQuant`` after import), and
  ``where(x >= beta, 1, -1)`` with a per-channel ``beta`` (ReActNet's RSign),
* ``where(x < 0, -1, 1)``,
* ``cast(x >= 0) * 2 - 1``,

* ``sign(sign(x) + c)`` with ``0 < c < 1`` (Larq's ``ste_sign`` as tf2onnx exports it, c = 0.1:
  ``sign(0) + c = c > 0``), and with ``-1 < c < 0`` the strict binarizer,

and the same with ``>`` (``<=``), meaning ``x > 0 -> +1``: a strict binarizer, packed by
``x > 0`` (PyTorch code writes ``torch.where(x > 0, 1., -1.)`` as often as ``>=``),

where the constants may also be full tensors no larger than the result (``torch.ones_like(x)``
and ``-torch.ones_like(x)`` in ``torch.where``).

ONNX ``Sign`` is a different function (0 at 0); ``lower_sign`` handles it where it is provably
binary.
"""

from __future__ import annotations

from typing import NamedTuple

from tvm import relax

from schedules import bitserial

from .common import RuleContext, dtype_of, op_name, shape_of
from .fold_thresholds import per_channel
from .fuse_binary_dense import flattened_source


class Binarized(NamedTuple):
    """A binarizer's input ``x``; ``strict``: ``x > 0 -> +1`` instead of ``x >= 0 -> +1``."""

    x: object
    strict: bool


GREATER = {"relax.greater_equal": False, "relax.greater": True}  # compare -> strict, for "+1 if ..."
LESS = {"relax.less": False, "relax.less_equal": True}  # compare -> strict, for "-1 if ..."


def _compare_source(ctx: RuleContext, cond, ops: dict, features_last: bool = False) -> Binarized | None:
    """``x`` for ``x >= 0`` (or ``x < 0``, or the strict forms); ``x - beta`` for a per-channel
    constant ``beta`` (ReActNet's RSign). In IEEE arithmetic with subnormals ``x - beta`` is 0
    exactly when ``x == beta`` and has the sign of ``x - beta`` otherwise, so ``x - beta >= 0``
    iff ``x >= beta`` (and ``>`` iff ``>``); the subtraction is a per-channel step that
    thresholds fold. ``features_last``: ``x`` is ``[N, T, C]`` tokens, ``beta`` per feature."""
    compare = ctx.producer(cond)
    if op_name(compare) not in ops:
        return None
    strict = ops[op_name(compare)]
    x, threshold = compare.args
    if ctx.uniform(threshold, shape_of(x)) == 0.0:
        return Binarized(x, strict)
    values = ctx.constant(threshold)
    if values is None or not (per_feature(values, shape_of(x)) if features_last else per_axis1(values, shape_of(x))):
        return None
    return Binarized(ctx.builder_.emit(relax.op.subtract(x, threshold), "shifted"), strict)


def per_axis1(values, shape) -> bool:
    """A constant varying along axis 1 only, of an NC or NCHW tensor."""
    return len(shape) in (2, 4) and per_channel(values, shape) is not None


def per_feature(values, shape) -> bool:
    """A constant varying along the features (last axis) only, of ``[N, T, C]`` tokens."""
    return len(shape) == 3 and values.ndim <= 3 and all(d == 1 for d in values.shape[:-1]) and (
        values.ndim == 0 or values.shape[-1] in (1, shape[-1]))


def binarized_input(ctx: RuleContext, call, features_last: bool = False) -> Binarized | None:
    """The input of ``call`` when it computes ``x >= 0 ? +1 : -1`` (or ``x > 0 ? +1 : -1``) in
    one of the recognised forms (``features_last``: see ``_compare_source``)."""
    name = op_name(call)
    if name == "relax.where":
        cond, high, low = call.args
        high, low = ctx.uniform(high, shape_of(cond)), ctx.uniform(low, shape_of(cond))
        if (high, low) == (1.0, -1.0):
            return _compare_source(ctx, cond, GREATER, features_last)
        if (high, low) == (-1.0, 1.0):
            return _compare_source(ctx, cond, LESS, features_last)
        return None
    if name in ("relax.subtract", "relax.add"):
        doubled, offset = call.args
        if ctx.uniform(offset, shape_of(doubled)) != (1.0 if name == "relax.subtract" else -1.0):
            return None
        doubled = ctx.producer(doubled)
        if op_name(doubled) != "relax.multiply" or ctx.uniform(doubled.args[1], shape_of(doubled.args[0])) != 2.0:
            return None
        cast = ctx.producer(doubled.args[0])
        if op_name(cast) != "relax.astype":
            return None
        return _compare_source(ctx, cast.args[0], GREATER, features_last)
    if name == "relax.sign":
        return shifted_sign_source(ctx, call.args[0])
    return None


def shifted_sign_source(ctx: RuleContext, shifted) -> Binarized | None:
    """``x`` for ``sign(sign(x) + c)``: +1 where ``x > 0`` (1 + c > 0), -1 where ``x < 0`` (c - 1 < 0),
    and at 0 the sign of ``c`` (``0 < |c| < 1``; all exact in float32)."""
    node = ctx.producer(shifted)
    if op_name(node) != "relax.add":
        return None
    for inner, offset in ((node.args[0], node.args[1]), (node.args[1], node.args[0])):
        c = ctx.uniform(offset, shape_of(node))
        if c is not None and 0 < abs(c) < 1 and op_name(ctx.producer(inner)) == "relax.sign":
            return Binarized(ctx.producer(inner).args[0], strict=c < 0)
    return None


def pattern_names(ctx: RuleContext, first) -> list[str]:
    """The bindings of a binarizer pattern from ``first`` (a where's condition, the cast form's
    doubled term) down to its comparison, for the log: ``inspect`` credits each to the kernel
    that replaces the binarizer (its pack, or the rows ``LiftTokenMatmul`` binarizes)."""
    names, var = [], first
    while isinstance(var, relax.Var):
        names.append(var.name)
        node = ctx.producer(var)
        if op_name(node) in GREATER or op_name(node) in LESS:
            break
        var = node.args[0] if op_name(node) in ("relax.multiply", "relax.astype", "relax.add") else None
    return names


def pack_and_unpack(ctx: RuleContext, x, flat_shape=None, *matched, strict: bool = False):
    """``unpack(pack(x))`` (reshaped to ``flat_shape`` if given), ``x`` float NCHW or [N, C];
    ``strict``: the bits say ``x > 0``, not ``x >= 0``.

    ``matched``: the other bindings (variables or names) of the binarizer pattern, for the log.
    """
    channels = shape_of(x)[1]
    if strict:
        pack = ctx.emit_kernel(lambda t: bitserial.pack_sign(t, strict=True), x, op="pack_sign", strict=True)
    else:
        pack = ctx.emit_kernel(bitserial.pack_sign, x, op="pack_sign")
    packed = ctx.builder_.emit(pack, ctx.logged_name("packed"))
    # the bit tensor goes last: inspect maps it back to the binarizer
    ctx.fused("pack_sign", f"binarizer{' (x > 0)' if strict else ''} on {shape_of(x)}", *matched, packed)
    unpacked = ctx.emit_kernel(
        lambda p: bitserial.unpack_sign(p, channels), packed, op="unpack_sign", channels=channels
    )
    if flat_shape is None:
        return unpacked
    return relax.op.reshape(ctx.builder_.emit(unpacked), flat_shape)


def before_flatten(ctx: RuleContext, x):
    """``(t, flat_shape)``: ``x`` as the NCHW or NCW tensor ``t`` a flatten made it from and
    ``x``'s shape, or ``(x, None)``. Binarizing commutes with a flatten: binarize ``t``, so the
    producer's batch norm can fold into a threshold and the bits stay channel-packed, and
    flatten the unpacked view."""
    source = flattened_source(ctx, x)  # x itself unless x is the flatten of an NCHW or NCW tensor
    if source is not None and source is not x and len(shape_of(source)) in (3, 4):
        return source, shape_of(x)
    return x, None


def lower_binarizer(ctx: RuleContext, call):
    found = binarized_input(ctx, call)
    if found is None:
        return None
    x = found.x
    if len(shape_of(x)) not in (2, 3, 4) or dtype_of(x) != "float32":
        ctx.keep_float(f"binarizer on a {len(shape_of(x))}-d {dtype_of(x)} tensor (NCHW, NCW or [N, C] float32 only)")
        return None
    x, flat_shape = before_flatten(ctx, x)
    if len(shape_of(x)) == 3:  # NCW: binarize its one-row NCHW view (see lift_conv1d)
        n, c, length = shape_of(x)
        flat_shape = flat_shape if flat_shape is not None else shape_of(x)
        x = ctx.builder_.emit(relax.op.reshape(x, [n, c, 1, length]), "rows")
    return pack_and_unpack(ctx, x, flat_shape, *pattern_names(ctx, call.args[0]), strict=found.strict)
