"""Replace BiBERT's zero-mean binarizer of the attention scores by the comparison it equals.

BiBERT's public code (``transformer/utils_quant.py`` of htqin/BiBERT, ``ZMeanBinaryQuantizer``)
makes Bi-Attention's decisions as ``out = torch.sign(x); out[out == -1] = 0``, which PyTorch
exports as ``Where(Equal(Sign(x), -1), 0, Sign(x))``.

Claim: that is ``Cast(x > 0)`` for every ``x`` that is not NaN: ``x < 0`` has sign -1, replaced
by 0; ``x = ±0`` has sign 0, kept; ``x > 0`` has sign 1, kept; the comparison gives the same 0,
0, 1 (and +0.0, the ``Where``'s constant, which the pass requires to be +0.0). For NaN the graph
gives NaN and the comparison 0, so the pass proves ``x`` is never NaN: ``x`` must be float ops
with constants on an attention-scores kernel (``analysis.attention.score_chain``), whose integer
``S`` is bounded by its taps, and the chain evaluated in float32 on every reachable ``S`` and
every element of its constants (``chain_on_scores``) must give no NaN. Otherwise the form stays
float, with the reason. ``FuseAttentionContext`` then reads ``Cast(x > 0)`` as Bi-Attention's
strict form: the decisions as bits, ``P @ Sign(V)`` one popcount kernel.

In the attention phase: after ``FuseBinaryAttention`` (which makes the scores kernel), before
``FuseAttentionContext``.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .analysis.attention import chain_on_scores, score_chain
from .common import PassLog, RuleContext, dtype_of, op_name, rule_pass, shape_of

ZERO_MEAN_SIGN = "zero_mean_sign"  # inspect: a float rewrite until the attention context takes it


def zero_mean_sign(ctx: RuleContext, call):
    """``(x, sign var, equal var)`` when ``call`` is float32 ``Where(Equal(Sign(x), -1), +0.0,
    Sign(x))``, else None."""
    if op_name(call) != "relax.where" or dtype_of(call) != "float32":
        return None
    condition, zero, kept = call.args
    value = ctx.uniform(zero, shape_of(call))
    if value != 0.0 or np.signbit(np.float32(value)):
        return None
    sign, equal = ctx.producer(kept), ctx.producer(condition)
    if op_name(sign) != "relax.sign" or op_name(equal) != "relax.equal" or ctx.scalar(equal.args[1]) != -1.0:
        return None
    if not (equal.args[0].same_as(kept) or ctx.producer(equal.args[0]).same_as(sign)):
        return None
    return sign.args[0], kept, condition


def never_nan(ctx: RuleContext, x) -> str | None:
    """None when ``x`` is provably never NaN (the float ops of an attention-scores kernel, NaN on no
    reachable ``S``), else why not."""
    chain = score_chain(ctx, x, shape_of(x))
    if chain is None:
        return "its input is not float ops with constants on an attention-scores kernel, so not proven free of NaN"
    scores, steps, _ = chain
    name, attrs = ctx.bnn_kernel(scores)
    taps = int(attrs["bnn.taps"])
    found = chain_on_scores(steps, taps, None if name.startswith("ternary_") else taps % 2)
    if found is None:
        return "the constants on the scores are too large to tabulate"
    if np.isnan(found[1]).any():
        return "the float ops on the scores give NaN for some reachable score"
    return None


def rewrite(ctx: RuleContext, call):
    """``Where(Equal(Sign(x), -1), 0, Sign(x))`` on never-NaN ``x``: ``Cast(x > 0)``."""
    found = zero_mean_sign(ctx, call)
    if found is None:
        return None
    x, sign_var, equal_var = found
    reason = never_nan(ctx, x)
    if reason is not None:
        ctx.keep_float(f"BiBERT's zero-mean sign (Sign with -1 set to 0) stays float: {reason}", sign_var, equal_var)
        return None
    positive = ctx.builder_.emit(relax.op.greater(x, relax.const(0.0, "float32")), ctx.logged_name("positive"))
    originals = tuple(v.name for v in (sign_var, equal_var) if isinstance(v, relax.Var))
    ctx.alias(originals, positive)
    ctx.fused(ZERO_MEAN_SIGN, "BiBERT's zero-mean sign (Sign with -1 set to 0) as x > 0 (x never NaN)", sign_var,
              equal_var)
    return relax.op.astype(positive, "float32")


def lower_zero_mean_sign(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    return rule_pass(__name__, rewrite, logs)
