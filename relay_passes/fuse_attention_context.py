"""Rewrite Bi-Attention's ``P @ Sign(V)``, ``P = bool(S / sqrt(d) + mask)`` of an attention-scores
kernel, into bits and one popcount kernel.

The decisions ``P`` become bits along the keys, computed from the packed Q and K by one kernel with
the float ops on the scores folded into integer intervals on ``S`` (``analysis.attention.
score_intervals``); ``Sign(V)`` is packed along the tokens (as bits where it provably never sees 0,
else sign and nonzero words), and the context ``P @ Sign(V)`` is one popcount kernel. The float
matmul is exact (0/1 times -1/0/+1, integer sums below 2^24), and so is the kernel.

After ``FuseBinaryAttention`` (which makes the scores kernel), before ``FoldThresholds``.
"""

from __future__ import annotations

import tvm
from tvm import relax

from bnn_tvm.schedules import bitserial

from .analysis.attention import (
    CONTEXT_REFUSAL,
    attention_bool,
    head_source,
    never_zero,
    score_chain,
    score_intervals,
    signed_heads,
)
from .common import PassLog, RuleContext, function_rule_pass, op_name, shape_of, use_counts


def context_rule(uses: dict):
    """``rewrite`` for a function whose bindings are used ``uses`` times: a ``P`` read elsewhere too
    (``verify`` exposes it as an output) is read there from the bits, unpacked."""
    return lambda ctx, call: rewrite(ctx, call, uses)


def rewrite(ctx: RuleContext, call, uses: dict):
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
    # after the context matmul, P's tensor first and the bits last, as a pack logs (``compiler.PACKED_TENSOR``)
    ctx.fused(kind, f"P = S ({ops}) {'>' if strict else '>='} {ctx.scalar(cmp.args[1])} as {per}, bits along {keys} keys",
              *bool_vars, *visited, bits)
    probability = bool_vars[0]
    if uses.get(probability, 0) > 1:  # the later uses read the kernel's decisions
        unpacked = ctx.builder_.emit(ctx.emit_kernel(lambda b: bitserial.unpack_bits(b, keys), bits,
                                                     op="unpack_bits", keys=keys))
        ctx.set_var_remap(probability, unpacked)
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


def fuse_attention_context(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    return function_rule_pass(__name__, lambda func: context_rule(use_counts(func)), logs)
