"""Rewrite ``Where(x >= 0, +1, -1)`` into ``unpack(pack(x))``: the binary value is now a bit.

The graph still computes the same tensor (the unpack restores it), but every later pass can now
see the packed bits and feed them to binary kernels directly. ``x >= 0 -> +1`` is the binarizer
convention of this project; ONNX ``Sign`` (0 at 0) is a different function and is not matched.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from schedules import bitserial

from .common import RuleContext, dtype_of, op_name, shape_of


def binarized_input(ctx: RuleContext, call):
    """``x`` when ``call`` is ``where(greater_equal(x, 0), 1, -1)`` on NCHW or [N, C] floats."""
    if op_name(call) != "relax.where":
        return None
    cond, high, low = call.args
    compare = ctx.producer(cond)
    if op_name(compare) != "relax.greater_equal":
        return None
    x, zero = compare.args
    zero, high, low = ctx.constant(zero), ctx.constant(high), ctx.constant(low)
    if zero is None or high is None or low is None:
        return None
    if not (np.all(zero == 0) and np.all(high == 1) and np.all(low == -1)):
        return None
    if high.size != 1 or low.size != 1 or zero.size != 1:
        return None
    if len(shape_of(x)) not in (2, 4) or dtype_of(x) != "float32":
        return None
    return x


def flattened_source(ctx: RuleContext, x):
    """``y`` when ``x`` is ``reshape(y)`` flattening NCHW ``y`` to ``[N, C*H*W]``."""
    node = ctx.producer(x)
    if op_name(node) != "relax.reshape":
        return None
    source = node.args[0]
    src, dst = shape_of(source), shape_of(x)
    if len(src) == 4 and len(dst) == 2 and src[0] == dst[0] and dst[1] == src[1] * src[2] * src[3]:
        return source
    return None


def lower_binarizer(ctx: RuleContext, call):
    x = binarized_input(ctx, call)
    if x is None:
        return None
    # Binarizing commutes with a flatten: binarize the NCHW tensor, so the producer's batch norm
    # can fold into a threshold and the bits stay channel-packed; flatten the unpacked view.
    flat_shape = None
    source = flattened_source(ctx, x)
    if source is not None:
        flat_shape, x = shape_of(x), source
    channels = shape_of(x)[1]
    packed = ctx.builder_.emit(ctx.emit_kernel(bitserial.pack_sign, x, op="pack_sign"), "packed")
    ctx.log.rewrites.append(f"binarizer on {shape_of(x)} -> pack_sign")
    unpacked = ctx.emit_kernel(
        lambda p: bitserial.unpack_sign(p, channels), packed, op="unpack_sign", channels=channels
    )
    if flat_shape is None:
        return unpacked
    return relax.op.reshape(ctx.builder_.emit(unpacked), flat_shape)
