"""Rewrite attention's ``Sign(Q) @ Sign(K)^T`` (two binarized activations) into one popcount kernel.

BiBERT-style attention (as ``torch.onnx.export`` writes ``torch.sign(q) @ torch.sign(k).transpose(-2,
-1)``, either exporter) is ``MatMul(Sign(q), Transpose(Sign(k), [0, 1, 3, 2]))`` on ``[B, H, T, d]``
heads, each ``q`` the transpose ``[0, 2, 1, 3]`` of a ``[B, T, H, d]`` view of a linear's output.
Both operands are packed along the contracted axis ``d`` per (batch, head, token)
(``bitserial.pack_heads``, reading the ``[B, T, H, d]`` view in place, so the transposes never
run; K with its tokens last, so a vector of keys is one load), and the scores are

* bipolar, when both ``Sign``s provably never see 0: ``S = d - 2 * popcount(q XOR k)``;
* ternary otherwise (``Sign(0) = 0``): sign and nonzero words, ``m = m_q AND m_k``,
  ``S = popcount(m) - 2 * popcount((s_q XOR s_k) AND m)``.

Either way ``S`` is the exact integer the float matmul sums: every product is -1, 0 or +1, and
float32 adds integers below 2^24 exactly, so ONNX Runtime's float32 result equals it bit for bit
(``|S| <= d``). A ``Sign`` is proven non-zero as ``LowerSign`` proves it: its input, through the
head views (reshapes, transposes), is a per-channel float chain of a binary kernel's rows that
no reachable integer sends to 0 (``analyse_chain``).

After the ``Sign`` rounds (the linears before it are kernels by then), before ``FoldThresholds``.
Anything else (a binarized operand that is not a ``Sign``, other ranks) stays float, and
``inspect`` says why where the pattern was close.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from schedules import bitserial

from .common import RuleContext, dtype_of, op_name, shape_of
from .fold_thresholds import CONST_FIRST, NUMPY_OPS, OPEN_HIGH, OPEN_LOW, RELAX_OPS, analyse_chain, candidates_of

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


def packed_heads(ctx: RuleContext, x, sign_var, ternary: bool, tokens_last: bool):
    """``pack_heads`` of the heads ``x`` (a binding named after the ``Sign``), logged."""
    source, axis = head_source(ctx, x)
    packed = ctx.builder_.emit(
        ctx.emit_kernel(lambda t: bitserial.pack_heads(t, axis, ternary, tokens_last), source, op="pack_heads",
                        heads_axis=axis, ternary=ternary, tokens_last=tokens_last),
        ctx.logged_name("heads"),
    )
    how = "sign and nonzero words (its zeros exact)" if ternary else "bits (proven never 0)"
    ctx.fused("pack_heads", f"Sign on heads {shape_of(x)} packed along d as {how}", sign_var, packed)
    return packed


def fuse_binary_attention(ctx: RuleContext, call):
    if op_name(call) != "relax.matmul" or len(shape_of(call)) != 4:
        return None
    left, right = (signed_heads(ctx, call.args[0], False), signed_heads(ctx, call.args[1], True))
    if left is None and right is None and signed_heads(ctx, call.args[1], False) is not None:
        ctx.keep_float(f"P @ Sign(V) of Bi-Attention: {CONTEXT_REFUSAL} (the float matmul is exact: 0/1 times -1/0/+1)")
        return None
    if left is None or right is None:
        if left is not None or right is not None:
            ctx.keep_float("attention product with one Sign operand: the other is not Sign(heads)^T")
        return None
    (xq, sign_q), (xk, sign_k) = left, right
    batch, heads, tokens, depth = shape_of(xq)
    if shape_of(xk)[:2] != (batch, heads) or shape_of(xk)[3] != depth:
        return None
    ternary = not (never_zero(ctx, xq) and never_zero(ctx, xk))
    q = packed_heads(ctx, xq, sign_q, ternary, tokens_last=False)
    k = packed_heads(ctx, xk, sign_k, ternary, tokens_last=True)
    kind = "ternary_attention_scores" if ternary else "binary_attention_scores"
    keys = shape_of(xk)[2]
    ctx.fused(kind, f"Sign(Q) Sign(K)^T, {batch}x{heads} heads, {tokens}x{keys} scores over d={depth}"
              + (" (ternary: Sign may see 0)" if ternary else ""))
    return ctx.emit_kernel(
        lambda a, b: bitserial.scores_to_float(bitserial.attention_scores_dot(a, b, depth, ternary)),
        q, k, op=kind, taps=depth,
    )


# --------------------------------------------------------------------------------------------
# Bi-Attention: P = bool(S / sqrt(d) + mask), then P @ Sign(V)

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


def score_intervals(steps, threshold: float, strict: bool, taps: int, parity: int | None):
    """``(low, high)`` int32 tables (the broadcast shape of the steps' constants, rank 4): the
    decision ``chain(S) >= threshold`` (``strict``: ``>``) holds exactly when ``low <= S <=
    high``, for every integer ``S`` the scores kernel can return (``|S| <= taps``, of one
    ``parity`` when bipolar). Found by evaluating the float32 chain, in the graph's order and
    rounding, on every such ``S`` for every element of the constants (so the mask's -10000 gives
    an empty interval, a tie lands on the side the float graph puts it). None when some element's
    decisions are not an interval, or the constants are too large to tabulate."""
    shape = np.broadcast_shapes((1, 1, 1, 1), *(const.shape for _, const in steps))
    if int(np.prod(shape)) > MAX_MASK_VALUES:
        return None
    candidates = candidates_of(taps, 1, parity)
    y = np.broadcast_to(candidates.astype(np.float32), shape + (candidates.size,))
    with np.errstate(all="ignore"):
        for op, const in steps:
            y = NUMPY_OPS[op](y, const[..., None]).astype(np.float32)
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


def fuse_attention_context(ctx: RuleContext, call):
    """``P @ Sign(V)`` with ``P = bool(chain(S))`` of an attention-scores kernel: the decisions as
    bits along the keys (one kernel from the packed Q and K, the chain folded into integer
    intervals), ``Sign(V)`` packed along the tokens, and one popcount kernel for the context."""
    if op_name(call) != "relax.matmul" or len(shape_of(call)) != 4:
        return None
    values = signed_heads(ctx, call.args[1], False)
    found = attention_bool(ctx, call.args[0]) if values is not None else None
    if found is None:
        return None
    cmp, strict, bool_vars = found
    scores_shape = shape_of(cmp.args[0])
    chain = score_chain(ctx, cmp.args[0], scores_shape)
    if chain is None:
        ctx.keep_float(f"P @ Sign(V) of Bi-Attention: {CONTEXT_REFUSAL} (an op between them is not elementwise "
                       "with a constant broadcasting into the scores)")
        return None
    scores, steps, visited = chain
    name, attrs = ctx.bnn_kernel(scores)
    taps = int(attrs["bnn.taps"])
    ternary = name.startswith("ternary_")
    intervals = score_intervals(steps, ctx.scalar(cmp.args[1]), strict, taps, None if ternary else taps % 2)
    if intervals is None:
        ctx.keep_float("P @ Sign(V) of Bi-Attention: the float ops on the scores are not monotone in S, "
                       "or the constants are too large to tabulate")
        return None
    xv, sign_v = values
    batch, heads, tokens, keys = scores_shape
    if shape_of(xv)[:3] != (batch, heads, keys):
        return None
    q, k = ctx.kernel_inputs(scores)
    low, high = (relax.const(v) for v in intervals)
    kind = name.replace("_attention_scores", "_attention_bits")
    bits = ctx.builder_.emit(
        ctx.emit_kernel(lambda a, b, lo, hi: bitserial.attention_bits(a, b, lo, hi, taps, ternary), q, k, low, high,
                        op=kind, taps=taps, strict=int(strict)),
        ctx.logged_name("bits"),
    )
    ops = " ".join(f"{op} {'mask' if c.size > 1 else float(c.reshape(()))}" for op, c in steps)
    per = ("one integer interval on S" if intervals[0].size == 1 else
           f"an integer interval on S per element of the {'x'.join(map(str, intervals[0].shape))} constants")
    ctx.fused(kind, f"P = S ({ops}) {'>' if strict else '>='} {ctx.scalar(cmp.args[1])} as {per}, bits along {keys} keys",
              *bool_vars, *visited)
    ternary_v = not never_zero(ctx, xv)
    source, axis = head_source(ctx, xv)
    packed = ctx.builder_.emit(
        ctx.emit_kernel(lambda t: bitserial.pack_tokens(t, axis, ternary_v), source, op="pack_values",
                        heads_axis=axis, ternary=ternary_v),
        ctx.logged_name("values"),
    )
    how = "sign and nonzero words (its zeros exact)" if ternary_v else "bits (proven never 0)"
    ctx.fused("pack_values", f"Sign on values {shape_of(xv)} packed along the tokens as {how}", sign_v, packed)
    context = "ternary_attention_context" if ternary_v else "binary_attention_context"
    depth = shape_of(xv)[3]
    ctx.fused(context, f"P @ Sign(V), {batch}x{heads} heads, {tokens}x{depth} context over {keys} keys"
              + (" (ternary: Sign may see 0)" if ternary_v else ""))
    return ctx.emit_kernel(
        lambda p, v: bitserial.scores_to_float(bitserial.attention_context_dot(p, v, ternary_v)),
        bits, packed, op=context, keys=keys,
    )
