"""Replace XNOR-Net's scaled straight-through estimator by the scaled ``Sign`` it estimates.

XNOR-Net code that keeps the estimator in the forward pass (BiBench's ``XNORConv2d``,
``bibench/models/layers/xnor.py``) scales the sign by the per-sample mean magnitude ``beta``
*inside* the estimator: ``out = (beta * sign(x)).detach() - clip(x).detach() + clip(x)``, i.e.
``(M - P) + P`` with ``M = beta * S``. Unlike the unscaled estimator (``LowerStraightThrough``)
this is not exactly ``M`` in float32: ``M`` is not ``±1``, so ``M - P`` rounds to any float32
and adding ``P`` back leaves the rounding error.

Claim: with ``|P| <= 1`` the float graph's value is within ``u (2 |M| + 1)(1 + u)`` of ``M``
(``u = 2^-24``): ``t = (M - P)(1 + d1)``, ``r = (t + P)(1 + d2)`` with ``|d1|, |d2| <= u``, so
``r - M = (M - P) d1 + M d2 + (M - P) d1 d2`` and ``|r - M| <= u (|M| + |P|)(1 + u) + u |M|``.
The pass proves ``|P| <= 1`` over every float32 value of the tensor ``S`` and ``P`` are
functions of (``analysis.elementwise``), and that ``beta`` is a run-time value per sample
(``[N, 1, 1, 1]``, as ``LiftActivationScale`` moves it after the conv); it then returns ``M``.
The conv reading it becomes a binary conv times ``beta``, within rounding of the float graph's
(like any XNOR-Net scale, and a float conv summing in its own order): ``inspect`` says so, and a
binarizer after it can flip only at a near-tie, which ``verify`` reports as such.
"""

from __future__ import annotations

import functools

import numpy as np
import tvm

from .analysis.elementwise import Elementwise, Outcome, for_all_inputs
from .analysis.elementwise_graph import FunctionBuilder, Unsupported, root_candidates
from .analysis.patterns import scaled_estimator_parts
from .common import PassLog, RuleContext, dtype_of, rule_pass, shape_of

SCALED_STRAIGHT_THROUGH = "scaled_straight_through"  # inspect: nodes of an estimator that became beta * Sign


def per_sample(ctx: RuleContext, scaled_var, sign_var):
    """``beta`` when ``scaled_var`` is ``beta * Sign`` with ``beta`` a run-time ``[N, 1, 1, 1]``."""
    node = ctx.producer(scaled_var)
    beta = node.args[1] if node.args[0].same_as(sign_var) else node.args[0]
    shape = shape_of(sign_var)
    if ctx.constant(beta) is not None or len(shape) != 4 or shape_of(beta) != (shape[0], 1, 1, 1):
        return None
    return beta


def within_one(p_node: int):
    """``decide_bounds`` and ``decide_values`` for ``for_all_inputs``: ``|P| <= 1``."""

    def on_bounds(bounds):
        p = bounds[p_node]
        return p.empty | ((p.lo >= -1) & (p.hi <= 1)), p.nan, p.empty

    def on_values(values):
        p = values[p_node]
        nan = np.isnan(p)
        return nan | (np.abs(p) <= 1), nan

    return on_bounds, on_values


@functools.lru_cache(maxsize=64)
def proof(nodes: tuple, p_node: int) -> Outcome:
    """One proof per estimator function (every layer of a model has the same one)."""
    return for_all_inputs(Elementwise(list(nodes)), *within_one(p_node))


def prove(ctx: RuleContext, sign_var, p_var) -> tuple[bool, str, FunctionBuilder | None]:
    """``(holds, reason, function)``: ``|P| <= 1`` over every float32 value of the first root
    candidate where ``S`` and ``P`` are both functions of it."""
    reason = "p is not an elementwise function of the sign's input"
    for root in root_candidates(ctx, sign_var):
        try:
            builder = FunctionBuilder(ctx, shape_of(sign_var), root=root)
            builder.node(sign_var)
            p_node = builder.node(p_var)
        except Unsupported as err:
            reason = str(err)
            continue
        outcome = proof(tuple(builder.function.nodes), p_node)
        if outcome.holds:
            return True, "", builder
        reason = ("the bound analysis could not decide |p| <= 1" if outcome.undecided
                  else f"|p| > 1 at x = {outcome.counterexample:.9g}")
    return False, reason, None


def rewrite(ctx: RuleContext, call):
    parts = scaled_estimator_parts(ctx, call)
    if parts is None or dtype_of(call) != "float32":
        return None
    scaled_var, sign_var, p_var, difference = parts
    if per_sample(ctx, scaled_var, sign_var) is None:
        ctx.keep_float("scaled straight-through estimator (beta * sign(x) - p) + p: beta is not one run-time value per sample")
        return None
    holds, reason, builder = prove(ctx, sign_var, p_var)
    if not holds:
        ctx.keep_float(f"scaled straight-through estimator (beta * sign(x) - p) + p not proven within rounding of beta * sign(x): {reason}")
        return None
    ctx.fused(SCALED_STRAIGHT_THROUGH, "scaled straight-through estimator (beta * sign(x) - p) + p: beta * sign(x) "
              "within u(2|beta| + 1) per value, |p| <= 1 proven (float, within rounding)", difference, *builder.names)
    return scaled_var


def lower_scaled_straight_through(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    return rule_pass(__name__, rewrite, logs)
