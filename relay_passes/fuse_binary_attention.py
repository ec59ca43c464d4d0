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

import tvm

from bnn_tvm.schedules import bitserial

from .analysis.attention import CONTEXT_REFUSAL, head_source, never_zero, signed_heads
from .common import PassLog, RuleContext, op_name, rule_pass, shape_of


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


def rewrite(ctx: RuleContext, call):
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


def fuse_binary_attention(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    return rule_pass(__name__, rewrite, logs)
