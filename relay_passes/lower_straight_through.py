"""Replace a straight-through estimator left in an exported graph by the ``Sign`` it equals.

Published BNN code binarizes with a training trick that exports as arithmetic:
``out = sign(x).detach() - p(x).detach() + p(x)``, i.e. ``(S - P) + P`` (or ``P + (S - P)``)
with ``S = Sign(u)`` and ``P`` elementwise: ``Clip(x, -1, 1)`` (BinaryNet, DoReFa, XNOR++), or
Bi-Real/ReActNet's piecewise polynomial built from ``Less -> Cast`` masks.

Claim: ``(S - P) + P == S`` exactly in float32 (round to nearest even) whenever ``S = +1`` and
``0 <= P <= 1``, ``S = -1`` and ``-1 <= P <= 0``, or ``S = 0`` and ``P`` finite. Proof for
``S = 1`` (``S = -1`` is its mirror image): if ``P >= 1/2``, ``1 - P`` is exact (Sterbenz), so the
sum is exactly 1. If ``P < 1/2``, ``1 - P`` lies in ``(1/2, 1]`` where float32 values are
``2^-24`` apart, so ``fl(1 - P) = 1 - P + e`` with ``|e| <= 2^-25``, and the exact sum
``fl(1 - P) + P = 1 + e`` rounds to 1: ``1 + 2^-25`` is below the midpoint to ``1 + 2^-23``, and
``1 - 2^-25`` is the midpoint to ``1 - 2^-24``, which ties to the even 1. For ``S = 0``,
``-P + P = 0`` for finite ``P``.

The pass proves the condition for the graph at hand: ``S`` and ``P`` must be elementwise
functions of one tensor ``r``, and ``analysis.elementwise.for_all_inputs`` checks the condition
over every float32 value of ``r`` (interval bounds, value by value where they do not decide).
Where ``P`` is NaN in the float graph (the polynomial's ``x * x`` overflows to inf for
``|x| >= 2^64`` and ``inf * 0`` is NaN) the float graph's output is NaN and the compiled model
gives ``sign(x)``: the log says from which ``|r|`` on. Unproven estimators stay float, with the
reason (a counterexample value, or the op that is not supported).
"""

from __future__ import annotations

import functools

import numpy as np
import tvm
from tvm import relax

from .analysis.elementwise import Elementwise, Outcome, for_all_inputs
from .analysis.elementwise_graph import FunctionBuilder, Unsupported, root_candidates
from .analysis.patterns import estimator_parts
from .common import PassLog, RuleContext, dtype_of, rule_pass, shape_of

STRAIGHT_THROUGH = "straight_through_sign"  # inspect: nodes of an estimator that became a Sign

def condition_on_bounds(sign_node: int, p_node: int):
    """``decide_bounds`` for ``for_all_inputs``: the claim's condition from node bounds."""

    def decide(bounds):
        s, p = bounds[sign_node], bounds[p_node]
        constant = (s.lo == s.hi) & ~s.nan & ~s.empty
        some_p = ~p.empty
        positive = (p.lo >= 0) & (p.hi <= 1)
        negative = (p.lo >= -1) & (p.hi <= 0)
        finite = np.isfinite(p.lo) & np.isfinite(p.hi)
        fits = np.where(s.lo > 0, positive, np.where(s.lo < 0, negative, finite))
        return constant & (~some_p | fits), p.nan, p.empty

    return decide


def condition_on_values(sign_node: int, p_node: int):
    def decide(values):
        s, p = values[sign_node], values[p_node]
        nan = np.isnan(p) | np.isnan(s)
        fits = np.where(s > 0, (p >= 0) & (p <= 1), np.where(s < 0, (p >= -1) & (p <= 0), np.isfinite(p)))
        return nan | fits, nan

    return decide


def prove(ctx: RuleContext, sign_var, p_var) -> tuple[Outcome | None, str, FunctionBuilder | None]:
    """``(outcome, reason, function)``: the proof over every float32 value of the first root
    candidate that gives one, else the first refusal (``outcome`` None: why none was tried)."""
    first = None
    for root in root_candidates(ctx, sign_var):
        try:
            builder = FunctionBuilder(ctx, shape_of(sign_var), root=root)
            sign_node, p_node = builder.node(sign_var), builder.node(p_var)
        except Unsupported as err:
            first = first or (None, str(err), None)
            continue
        outcome = proof(tuple(builder.function.nodes), sign_node, p_node)
        if outcome.holds:
            return outcome, "", builder
        first = first or (outcome, "", None)
    return first


@functools.lru_cache(maxsize=64)
def proof(nodes: tuple, sign_node: int, p_node: int) -> Outcome:
    """The proof for one estimator function: every estimator of a model has the same one, and
    the proof takes about a second."""
    return for_all_inputs(Elementwise(list(nodes)), condition_on_bounds(sign_node, p_node),
                          condition_on_values(sign_node, p_node))


def refusal(outcome: Outcome | None, reason: str) -> str:
    prefix = "straight-through estimator (sign(x) - p) + p not proven equal to sign(x): "
    if outcome is None:
        return prefix + reason
    if outcome.undecided:
        return prefix + "the bound analysis could not decide it"
    return prefix + f"at x = {outcome.counterexample:.9g}, p has the wrong sign or |p| > 1, where float32 rounding can change the sum"


def rewrite(ctx: RuleContext, call):
    parts = estimator_parts(ctx, call)
    if parts is None or dtype_of(call) != "float32":
        return None
    sign_var, p_var, difference = parts
    outcome, reason, builder = prove(ctx, sign_var, p_var)
    if outcome is None or not outcome.holds:
        ctx.keep_float(refusal(outcome, reason))
        return None
    detail = "straight-through estimator (sign(x) - p) + p: exactly sign(x), |p| <= 1 with the sign of x proven"
    if outcome.nan_from is not None:
        detail += (f" (the float graph yields NaN from |x| = {outcome.nan_from:.3g} on, where p overflows;"
                   " the compiled model gives sign(x) there)")
    ctx.fused(STRAIGHT_THROUGH, detail, difference, *builder.names)
    sign_call = ctx.producer(sign_var)
    return relax.op.sign(sign_call.args[0])


def lower_straight_through(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    return rule_pass(__name__, rewrite, logs)
