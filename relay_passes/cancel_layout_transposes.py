"""Cancel a pair of layout transposes around elementwise ops and pads.

tf2onnx converts a Keras (NHWC) model for NCHW inputs by wrapping each op it cannot move in
transposes: Larq's binarizer arrives as ``Transpose(to NHWC) -> Sign(Add(Sign(x), 0.1)) ->
Pad(value=1) in NHWC -> Transpose(to NCHW) -> Conv`` (its transpose optimiser has no handler for
``Sign``). An elementwise op commutes with any transpose, and a pad does once its widths follow
the axes, so ``T2(f(T1(x))) = f'(x)`` when ``T2`` undoes ``T1``; the binarizer and its pad then
sit directly before the conv, where the other passes find them.

The ops crossed: unary elementwise ops, and elementwise ops with a constant operand (any
constant that broadcasts: it is transposed along, a lower-rank one first given its leading unit
axes); ``pad``. Anything else between the two
transposes (an op of two tensors, a reduction, another transpose) stops the rewrite.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .common import PassLog, RuleContext, op_name, rule_pass, shape_of

LAYOUT = "layout_transposes_cancelled"  # inspect: transposes that no longer exist

UNARY = ("relax.sign", "relax.negative", "relax.abs", "relax.clip", "relax.nn.relu")
WITH_CONSTANT = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum", "relax.minimum")


def as_permutation(node) -> list[int] | None:
    """The axes of a ``permute_dims``, or of a reshape that only moves unit axes (tf2onnx writes
    ``Reshape`` for a transpose of a 1x1 feature map): the same data order, a new axis order."""
    if op_name(node) == "relax.permute_dims":
        return [int(a) for a in node.attrs.axes]
    if op_name(node) != "relax.reshape":
        return None
    before, after = shape_of(node.args[0]), shape_of(node)
    if sorted(before) != sorted(after) or sum(d != 1 for d in before) > 1:
        return None
    unit = [k for k, d in enumerate(before) if d == 1]
    others = iter([k for k, d in enumerate(before) if d != 1])
    units = iter(unit)
    return [next(others) if d != 1 else next(units) for d in after]


def crossing(ctx: RuleContext, node) -> int | None:
    """The argument position of the tensor ``node`` passes through, when the rewrite may cross it."""
    name = op_name(node)
    if name in UNARY or name == "relax.nn.pad":
        return 0
    if name in WITH_CONSTANT:
        constants = [ctx.constant(a) is not None for a in node.args]
        if constants.count(True) == 1:
            return constants.index(False)
    return None


def moved(ctx: RuleContext, node, tensor, position: int, perm: list[int]):
    """``node`` applied to the untransposed ``tensor``: a constant operand and a pad's widths
    follow the axes (``perm``: axis k of the transposed tensor is axis ``perm[k]`` of ``tensor``)."""
    if op_name(node) == "relax.nn.pad":
        width = [int(w) for w in node.attrs.pad_width]
        pairs = [None] * len(perm)
        for k, axis in enumerate(perm):
            pairs[axis] = width[2 * k: 2 * k + 2]
        return relax.op.nn.pad(tensor, [w for pair in pairs for w in pair], str(node.attrs.pad_mode),
                               float(node.attrs.pad_value))
    args = list(node.args)
    args[position] = tensor
    for i, arg in enumerate(args):
        value = ctx.constant(arg) if i != position else None
        if value is not None and value.size > 1:
            # broadcasting aligns trailing axes: a [C] bias of an NHWC tensor is [1, 1, 1, C]
            full = value.reshape((1,) * (len(perm) - value.ndim) + value.shape)
            args[i] = relax.const(np.ascontiguousarray(full.transpose(np.argsort(perm))))
    return relax.Call(node.op, args, node.attrs)


def rewrite(ctx: RuleContext, call):
    outer = as_permutation(call)
    if outer is None:
        return None
    chain, expr = [], call.args[0]
    while True:
        node = ctx.producer(expr)
        if as_permutation(node) is not None:
            break
        position = crossing(ctx, node)
        if position is None:
            return None
        chain.append((node, position, expr))
        expr = node.args[position]
    inner = as_permutation(node)
    if not chain or len(inner) != len(outer) or [inner[k] for k in outer] != list(range(len(inner))):
        return None  # nothing between them, or the outer transpose does not undo the inner one
    tensor = node.args[0]
    for op, position, var in reversed(chain):
        tensor = ctx.builder_.emit(moved(ctx, op, tensor, position, inner), "untransposed")
        if isinstance(var, relax.Var):
            ctx.alias((var.name,), tensor)
    ctx.fused(LAYOUT, f"transposes {inner} and {outer} around {len(chain)} elementwise op(s) cancelled", expr)
    return tensor


def cancel_layout_transposes(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    return rule_pass(__name__, rewrite, logs)
