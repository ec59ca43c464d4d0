"""Drop a term scaled by a constant zero: ``x + c * e`` with ``c == 0`` becomes ``x``.

FDA (Xu et al., NeurIPS 2021; BiBench's ``FDAConv2d``, ``bibench/models/layers/fda.py``) adds a
noise-adaptation term to the binarized activations, ``ba = sign(a) + alpha * e(a)``, where ``e``
is a small MLP over the channels plus ``0.1 * sin(a)``. Its training schedule decays ``alpha`` as
``0.05 * (1 + cos(pi * (epoch + 1) / epochs))``, exactly 0 in float32 at the last epoch, so the
trained model's graph carries ``sign(a) + 0 * e(a)``: the conv reads a binary tensor, but only
once the zero term is gone.

Claim: for a finite ``e``, ``c * e`` is ``±0`` and ``x + ±0`` equals ``x`` (as a value; only
the sign of a zero ``x`` can change, which no consumer of a ``Sign`` distinguishes: a conv's
products and the binarizers' planes treat ``±0`` alike). Where ``e`` is ``±inf`` or NaN the
float graph itself yields NaN (``0 * inf``) and the compiled model gives ``x``: the float graph's
own NaN, as for Bi-Real's polynomial estimator (``docs/exactness.md``); the log says so. ``c``
must be a constant whose every element is 0 and the sum must have ``x``'s shape (``c * e`` does
not broadcast ``x``).
"""

from __future__ import annotations

import numpy as np
import tvm

from .common import PassLog, RuleContext, dtype_of, op_name, rule_pass, shape_of

ZERO_TERM = "zero_scaled_term"  # inspect: a term multiplied by a constant 0, dropped


def zero_product(ctx: RuleContext, expr):
    """The product ``c * e`` (either order) with ``c`` a constant of zeros: its ``e``, else None."""
    node = ctx.producer(expr)
    if op_name(node) != "relax.multiply":
        return None
    for c, e in ((node.args[0], node.args[1]), (node.args[1], node.args[0])):
        value = ctx.constant(c)
        if value is not None and value.size and not np.any(value) and ctx.constant(e) is None:
            return e
    return None


def rewrite(ctx: RuleContext, call):
    if op_name(call) != "relax.add" or dtype_of(call) != "float32":
        return None
    for x, term in ((call.args[0], call.args[1]), (call.args[1], call.args[0])):
        if shape_of(x) == shape_of(call) and zero_product(ctx, term) is not None:
            ctx.fused(ZERO_TERM, "x + 0 * e: x (the term is scaled by a constant 0; where e is inf or NaN the float "
                      "graph yields NaN, the compiled model x)", term)
            return x
    return None


def fold_zero_scaled_term(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    return rule_pass(__name__, rewrite, logs)
