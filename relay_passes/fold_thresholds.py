"""Fold ``pack(affine chain(binary op))`` into the binary op: a per-channel integer interval.

Between a binary conv/dense and the next binarizer usually sit a bias, a batch norm, or a
scale. All are monotone per channel, so "``chain(d) >= 0``" holds on an interval of the integer
result ``d``. The interval is found by evaluating the chain on *every* integer ``d`` the layer
can produce, in float32 and in the order ONNX Runtime's CPU kernels compute it, so the integer
decision equals the float graph's decision, ties and negative scales included. The binary output
then stays packed for the next binary layer.
"""

from __future__ import annotations

import tvm
from tvm import relax

from bnn_tvm.schedules import bitserial

from .analysis.chain import FOLDABLE, analyse_chain
from .analysis.pools import pooled_decisions, pooled_point_decisions
from .analysis.rounding import OPEN_HIGH, OPEN_LOW, integer_inputs
from .common import PassLog, RuleContext, op_name, rule_pass
from .kernels import emit_or_pool, emit_points_or, integer_dot, kernel_params


def rewrite(ctx: RuleContext, call):
    kernel = ctx.bnn_kernel(call)
    if kernel is None or kernel[0] != "pack_sign":
        return None
    pools = []
    chain = analyse_chain(ctx, call.args[1].fields[0], pools)
    if chain is None:
        return None
    source, steps, visited, name, attrs = chain.source, chain.steps, chain.visited, chain.name, chain.attrs
    interval = chain.decision_interval(strict=bool(int(kernel[1].get("bnn.strict", 0))))
    if interval is None:
        ctx.keep_float(
            "the float ops before the binarizer are not monotone per channel, or a reachable value "
            "lies within float rounding of the threshold (non-power-of-two weight scale)",
            *visited[:-1],  # the float ops, not the binary kernel
        )
        return None
    flip = None
    over_points = bool(pools) and op_name(pools[0][0]) == "relax.max"
    if over_points:
        refusal, interval, flip = pooled_point_decisions(chain, pools[0][1], interval, OPEN_LOW, OPEN_HIGH)
        if refusal is not None:
            ctx.keep_float(refusal, *visited[:-1])
            return None
    elif pools:
        refusal, interval, flip = pooled_decisions(chain, pools[0][1], interval)
        if refusal is not None:
            ctx.keep_float(refusal, *visited[:-1])
            return None
    low, high = (relax.const(v) for v in interval)
    inputs = ctx.kernel_inputs(source)[: integer_inputs(name, attrs)]  # integers compare without the scale
    ctx.fused(FOLDABLE[name], f"{name} + {len(steps)} float op(s) + binarizer", *visited)
    dot = integer_dot(name, attrs)
    params = kernel_params(attrs)
    packed = ctx.emit_kernel(
        lambda *args: bitserial.threshold_pack(dot(*args[:-2]), *args[-2:]),
        *inputs,
        low,
        high,
        op=FOLDABLE[name],
        **params,
    )
    if not pools:
        return packed
    if over_points:
        return emit_points_or(ctx, ctx.builder_.emit(packed, "thresholded"), pools[0][0], flip)
    return emit_or_pool(ctx, ctx.builder_.emit(packed, "thresholded"), pools[0][0], flip)


def fold_thresholds(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    return rule_pass(__name__, rewrite, logs)
