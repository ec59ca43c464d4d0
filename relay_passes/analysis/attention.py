"""Bi-Attention's operands: ``Sign`` of attention heads, ``P = bool(chain(S))`` of the scores kernel,
and the integer intervals on ``S`` that decide ``P`` (``score_intervals``).
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ..common import RuleContext, dtype_of, op_name, shape_of
from .chain import CONST_FIRST, NUMPY_OPS, RELAX_OPS, analyse_chain
from .rounding import OPEN_HIGH, OPEN_LOW, candidates_of


SWAP_LAST = (0, 1, 3, 2)  # K^T of [B, H, T, d]


SPLIT_HEADS = (0, 2, 1, 3)  # [B, T, H, d] -> [B, H, T, d]


VIEWS = ("relax.reshape", "relax.permute_dims")


def axes_of(call) -> tuple[int, ...] | None:
    """The permutation of a ``permute_dims`` call (None: a plain reverse, not ours)."""
    axes = call.attrs.axes
    return None if axes is None else tuple(int(a) for a in axes)


def is_permute(call, axes: tuple[int, ...]) -> bool:
    return op_name(call) == "relax.permute_dims" and axes_of(call) == axes


def signed_heads(ctx: RuleContext, expr, transposed: bool):
    """``(x, sign_var)`` when ``expr`` is ``Sign(x)`` of float32 ``[B, H, T, d]`` heads
    (``transposed``: ``Sign(x)^T``, or ``Sign(x^T)``), else None."""
    node = ctx.producer(expr)
    sign_var = expr
    if transposed and is_permute(node, SWAP_LAST):  # Transpose(Sign(x))
        sign_var, node = node.args[0], ctx.producer(node.args[0])
        transposed = False
    if op_name(node) != "relax.sign":
        return None
    x = node.args[0]
    if transposed:  # Sign(Transpose(x))
        inner = ctx.producer(x)
        if not is_permute(inner, SWAP_LAST):
            return None
        x = inner.args[0]
    if len(shape_of(x)) != 4 or dtype_of(x) != "float32":
        return None
    return x, sign_var


def head_source(ctx: RuleContext, x):
    """``(tensor, heads_axis)``: the ``[B, T, H, d]`` tensor that ``x`` transposes (axis 2), so
    the pack reads it in place, or ``x`` itself (axis 1)."""
    node = ctx.producer(x)
    return (node.args[0], 2) if is_permute(node, SPLIT_HEADS) else (x, 1)


def never_zero(ctx: RuleContext, x) -> bool:
    """Whether every value of ``x`` is provably non-zero: ``x`` is views (reshapes, transposes) of
    a per-channel float chain of a binary kernel that maps no reachable integer to 0."""
    node = x
    while op_name(ctx.producer(node)) in VIEWS:
        node = ctx.producer(node).args[0]
    if len(shape_of(node)) not in (2, 4):
        return False
    chain = analyse_chain(ctx, node, pools=[])
    if chain is None:
        return False
    values = chain.values()
    return not any(np.any(v == 0) for v in values) and not any(np.any((v > 0) != (values[0] > 0)) for v in values)


CONTEXT_REFUSAL = "not a binary kernel: P is not bool(chain(S)) of the attention-scores kernel"


COMPARISONS = {"relax.greater_equal": False, "relax.greater": True}  # strict?


MAX_MASK_VALUES = 1 << 20  # elements of the broadcast constants whose intervals are tabulated


def attention_bool(ctx: RuleContext, expr):
    """``(comparison, strict, its vars)`` when ``expr`` is float32 ``Cast(cmp(x, c))`` or ``Where(cmp(x, c),
    1, 0)`` (the 1 and 0 may be full constant tensors, as ``torch.ones_like`` exports) with ``cmp``
    one of ``>=``, ``>`` and ``c`` a scalar constant, else None."""
    if dtype_of(expr) != "float32":
        return None
    node = ctx.producer(expr)
    if not (op_name(node) == "relax.astype" or (
            op_name(node) == "relax.where" and (ctx.uniform(node.args[1], shape_of(expr)), ctx.uniform(node.args[2], shape_of(expr))) == (1.0, 0.0))):
        return None
    cmp = ctx.producer(node.args[0])
    if op_name(cmp) not in COMPARISONS or ctx.scalar(cmp.args[1]) is None or ctx.constant(cmp.args[0]) is not None:
        return None
    return cmp, COMPARISONS[op_name(cmp)], [v for v in (expr, node.args[0]) if isinstance(v, relax.Var)]


def score_chain(ctx: RuleContext, expr, shape):
    """Walk from ``expr`` back through elementwise ops with a constant operand (``S / sqrt(d)``,
    ``S * scale``, ``+ mask``) to an attention-scores kernel: ``(scores var, [(op, constant)]
    scores side first, visited vars)``, or None. Each constant broadcasts into ``shape``."""
    steps, visited = [], []
    while True:
        kernel = ctx.bnn_kernel(expr)
        if kernel is not None and kernel[0].endswith("_attention_scores"):
            return expr, steps[::-1], visited
        node = ctx.producer(expr)
        op = RELAX_OPS.get(op_name(node))
        if op not in ("add", "subtract", "multiply", "divide"):
            return None
        lhs, rhs = node.args
        for source, other, const_first in ((lhs, rhs, False), (rhs, lhs, True)):
            values = ctx.constant(other)
            if values is None or ctx.constant(source) is not None:
                continue
            if shape_of(source) != tuple(shape) or values.ndim > len(shape) or any(
                    d not in (1, s) for d, s in zip(values.shape[::-1], shape[::-1])):
                return None
            steps.append((CONST_FIRST.get(op, op) if const_first else op,
                          values.astype(np.float32).reshape((1,) * (len(shape) - values.ndim) + values.shape)))
            visited.append(expr)
            expr = source
            break
        else:
            return None


def chain_on_scores(steps, taps: int, parity: int | None):
    """``(candidates, y)``: the integers ``S`` an attention-scores kernel can return (``|S| <=
    taps``, of one ``parity`` when bipolar) and the float32 chain of ``steps`` on each, in the
    graph's order and rounding, ``y`` of the constants' broadcast shape (rank 4) plus one axis
    over the candidates. None when the constants are too large to tabulate."""
    shape = np.broadcast_shapes((1, 1, 1, 1), *(const.shape for _, const in steps))
    if int(np.prod(shape)) > MAX_MASK_VALUES:
        return None
    candidates = candidates_of(taps, 1, parity)
    y = np.broadcast_to(candidates.astype(np.float32), shape + (candidates.size,))
    with np.errstate(all="ignore"):
        for op, const in steps:
            y = NUMPY_OPS[op](y, const[..., None]).astype(np.float32)
    return candidates, np.broadcast_to(y, shape + (candidates.size,))


def score_intervals(steps, threshold: float, strict: bool, taps: int, parity: int | None):
    """``(low, high)`` int32 tables (the broadcast shape of the steps' constants, rank 4): the
    decision ``chain(S) >= threshold`` (``strict``: ``>``) holds exactly when ``low <= S <=
    high``, for every integer ``S`` the scores kernel can return (``|S| <= taps``, of one
    ``parity`` when bipolar). Found by evaluating the float32 chain, in the graph's order and
    rounding, on every such ``S`` for every element of the constants (so the mask's -10000 gives
    an empty interval, a tie lands on the side the float graph puts it). None when some element's
    decisions are not an interval, or the constants are too large to tabulate."""
    found = chain_on_scores(steps, taps, parity)
    if found is None:
        return None
    candidates, y = found
    shape = y.shape[:-1]
    decide = (y > np.float32(threshold)) if strict else (y >= np.float32(threshold))
    decide = np.broadcast_to(decide, shape + (candidates.size,))
    count = decide.sum(axis=-1)
    first = np.argmax(decide, axis=-1)
    last = candidates.size - 1 - np.argmax(decide[..., ::-1], axis=-1)
    if np.any((count > 0) & (last - first + 1 != count)):
        return None  # not monotone in S
    low = np.where(first == 0, OPEN_LOW, candidates[first])
    high = np.where(last == candidates.size - 1, OPEN_HIGH, candidates[last])
    low, high = np.where(count == 0, 1, low), np.where(count == 0, 0, high)  # never: an empty interval
    return low.astype(np.int32), high.astype(np.int32)
