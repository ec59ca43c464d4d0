"""Treat ONNX ``Sign`` as a binarizer where it provably never sees 0.

``Sign(0) = 0`` is a third value no bit can hold. After a binary conv or dense, the input of a
``Sign`` is a per-channel float chain of an integer result; if that chain is non-zero at every
integer the layer can produce, ``Sign`` equals the ``x >= 0`` binarizer there and is lowered
like one. The chain may cross one max pool (BinaryNet's conv -> MaxPool -> BN -> Hardtanh ->
Sign): a pooled value is one of its window's values, so it is non-zero when they all are; and
a flatten (``Sign`` commutes with it). A ``Sign`` on an arbitrary float tensor stays float:
export ``Where(x >= 0, 1, -1)``.

With ``--sign-zero plus`` (``conventions.SIGN_ZERO``) every ``Sign`` is the ``x >= 0`` binarizer at
the plain binary cost, and the compiled model differs from the float graph wherever a ``Sign``
sees exactly 0 (``verify`` counts it).
"""

from __future__ import annotations

import numpy as np
import tvm

from .analysis.chain import analyse_chain
from .analysis.patterns import before_flatten
from .common import PassLog, RuleContext, dtype_of, op_name, rule_pass, shape_of
from .conventions import SIGN_ZERO
from .kernels import pack_and_unpack


def lower_sign(logs: list[PassLog] | None = None, sign_zero: str = "exact") -> tvm.transform.Pass:
    """The pass, for the ``Sign(0)`` convention ``sign_zero`` (one of ``SIGN_ZERO``)."""
    if sign_zero not in SIGN_ZERO:
        raise ValueError(f"sign_zero must be one of {SIGN_ZERO}, not {sign_zero!r}")
    return rule_pass(__name__, lower_any_sign if sign_zero == "plus" else lower_proven_sign, logs)


def lower_any_sign(ctx: RuleContext, call):
    """``Sign(0) = +1`` by the user's choice: any ``Sign`` of a float32 NCHW or [N, C] tensor."""
    if op_name(call) != "relax.sign":
        return None
    x, flat_shape = before_flatten(ctx, call.args[0])
    if len(shape_of(x)) not in (2, 4) or dtype_of(x) != "float32":
        ctx.keep_float("Sign on a tensor that is neither NCHW nor [N, C] float32")
        return None
    return pack_and_unpack(ctx, x, flat_shape)


def lower_proven_sign(ctx: RuleContext, call):
    if op_name(call) != "relax.sign":
        return None
    x, flat_shape = before_flatten(ctx, call.args[0])
    chain = analyse_chain(ctx, x, pools=[]) if len(shape_of(x)) in (2, 4) else None
    if chain is None:
        ctx.keep_float("Sign of a float tensor can output 0, which no bit holds: export Where(x >= 0, 1, -1)")
        return None
    values = chain.values()
    if any(np.any(v == 0) for v in values) or any(np.any((v > 0) != (values[0] > 0)) for v in values):
        ctx.keep_float("Sign can output 0 here (a reachable result maps to 0, or within rounding of it)")
        return None
    return pack_and_unpack(ctx, x, flat_shape)
