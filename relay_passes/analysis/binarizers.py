"""The binarizer forms ``LowerBinarizers`` and ``LiftTokenMatmul`` recognise (see
``relay_passes.lower_binarizers``): ``x >= 0 -> +1, else -1`` (or ``x > 0``) written as a
``Where``, a cast comparison, or Larq's ``sign(sign(x) + c)``.
"""

from __future__ import annotations

from typing import NamedTuple

from tvm import relax

from ..common import RuleContext, op_name, shape_of
from .chain import per_channel


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
