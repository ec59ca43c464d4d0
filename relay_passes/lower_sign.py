"""Treat ONNX ``Sign`` as a binarizer where it provably never sees 0.

``Sign(0) = 0`` is a third value no bit can hold. After a binary conv or dense, the input of a
``Sign`` is a per-channel float chain of an integer result; if that chain is non-zero at every
integer the layer can produce, ``Sign`` equals the ``x >= 0`` binarizer there and is lowered
like one. The chain may cross one max pool (BinaryNet's conv -> MaxPool -> BN -> Hardtanh ->
Sign): a pooled value is one of its window's values, so it is non-zero when they all are; and
a flatten (``Sign`` commutes with it). A ``Sign`` on an arbitrary float tensor stays float:
export ``Where(x >= 0, 1, -1)``.
"""

from __future__ import annotations

import numpy as np

from .common import RuleContext, op_name, shape_of
from .fold_thresholds import analyse_chain
from .lower_binarizers import before_flatten, pack_and_unpack


def lower_sign(ctx: RuleContext, call):
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
