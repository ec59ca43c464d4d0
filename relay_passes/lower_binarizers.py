"""Rewrite a binarizer into ``unpack(pack(x))``: the binary value is now a bit.

The graph still computes the same tensor (the unpack restores it), but later passes see the
packed bits and feed them to binary kernels directly. Recognised forms, all meaning
``x >= 0 -> +1, else -1`` exactly:

* ``where(x >= 0, 1, -1)`` (this project's export, QONNX ``BipolarQuant`` after import), and
  ``where(x >= beta, 1, -1)`` with a per-channel ``beta`` (ReActNet's RSign),
* ``where(x < 0, -1, 1)``,
* ``cast(x >= 0) * 2 - 1``,

* ``sign(sign(x) + c)`` with ``0 < c < 1`` (Larq's ``ste_sign`` as tf2onnx exports it, c = 0.1:
  ``sign(0) + c = c > 0``), and with ``-1 < c < 0`` the strict binarizer,

and the same with ``>`` (``<=``), meaning ``x > 0 -> +1``: a strict binarizer, packed by
``x > 0`` (PyTorch code writes ``torch.where(x > 0, 1., -1.)`` as often as ``>=``),

where the constants may also be full tensors no larger than the result (``torch.ones_like(x)``
and ``-torch.ones_like(x)`` in ``torch.where``).

ONNX ``Sign`` is a different function (0 at 0); ``lower_sign`` handles it where it is provably
binary.
"""

from __future__ import annotations

import tvm
from tvm import relax

from .analysis.binarizers import binarized_input, pattern_names
from .analysis.patterns import before_flatten
from .common import PassLog, RuleContext, dtype_of, rule_pass, shape_of
from .kernels import pack_and_unpack


def rewrite(ctx: RuleContext, call):
    found = binarized_input(ctx, call)
    if found is None:
        return None
    x = found.x
    if len(shape_of(x)) not in (2, 3, 4) or dtype_of(x) != "float32":
        ctx.keep_float(f"binarizer on a {len(shape_of(x))}-d {dtype_of(x)} tensor (NCHW, NCW or [N, C] float32 only)")
        return None
    x, flat_shape = before_flatten(ctx, x)
    if len(shape_of(x)) == 3:  # NCW: binarize its one-row NCHW view (see lift_conv1d)
        n, c, length = shape_of(x)
        flat_shape = flat_shape if flat_shape is not None else shape_of(x)
        x = ctx.builder_.emit(relax.op.reshape(x, [n, c, 1, length]), "rows")
    return pack_and_unpack(ctx, x, flat_shape, *pattern_names(ctx, call.args[0]), strict=found.strict)


def lower_binarizers(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    return rule_pass(__name__, rewrite, logs)
