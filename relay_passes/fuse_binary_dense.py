"""Rewrite ``matmul(unpack(p), W)`` (also through a flatten) with binary weights into XNOR-popcount.

Weights: ±1, or ±alpha per output (see ``fuse_binary_conv2d``).

A flatten of NCHW bits orders features channel-major; the packed tensor is channels-last, so the
weight's rows are permuted to (H, W, C) order before packing: no data movement at run time.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from schedules import bitserial

from .common import RuleContext, op_name, pack_bits, pack_planes, shape_of
from .fuse_binary_conv2d import split_scale


def flattened_source(ctx: RuleContext, data):
    """What a dense's ``[N, K]`` input ``data`` reads: the tensor a batch-keeping reshape (a
    flatten) of it views, or ``data`` itself; None when ``data`` is not 2-D or the reshape
    changes the batch."""
    if len(shape_of(data)) != 2:
        return None
    producer = ctx.producer(data)
    if op_name(producer) != "relax.reshape":
        return data
    source = producer.args[0]
    return source if shape_of(source)[0] == shape_of(data)[0] else None


def packed_features(ctx: RuleContext, data):
    """``(packed words [N, KW], spatial shape (C, H, W) or (C,))`` feeding a dense, or None."""
    source = flattened_source(ctx, data)
    if source is None:
        return None
    if source is not data:
        if len(shape_of(source)) != 4:
            return None
        kernel = ctx.bnn_kernel(source)
        if kernel is None or kernel[0] != "unpack_sign":
            return None
        packed = ctx.kernel_inputs(source)[0]
        n = shape_of(packed)[0]
        flat = ctx.builder_.emit(relax.op.reshape(packed, (n, int(np.prod(shape_of(packed)[1:])))))
        return flat, shape_of(source)[1:]
    kernel = ctx.bnn_kernel(data)
    if kernel is None or kernel[0] not in ("unpack_sign", "unpack_ternary"):
        return None
    return ctx.kernel_inputs(data)[0], shape_of(data)[1:]


def fuse_binary_dense(ctx: RuleContext, call):
    if op_name(call) != "relax.matmul":
        return None
    data, weight_expr = call.args
    features = packed_features(ctx, data)
    if features is None:
        return None
    weight = ctx.constant(weight_expr)  # [K, O]
    if weight is None or weight.ndim != 2:
        ctx.keep_float("weights are not a constant matrix")
        return None
    binary = split_scale(weight.T, ternary=True)
    if isinstance(binary, str):
        ctx.keep_float(binary)
        return None
    packed, feature_shape = features
    taps, outputs = weight.shape
    rows = binary.signs.reshape((outputs,) + tuple(feature_shape))  # [O, C(, H, W)]
    if rows.ndim == 4:
        rows = rows.transpose(0, 2, 3, 1)  # [O, H, W, C]: the packed layout, channels padded per position
    weight_bits = pack_planes(rows).reshape(2, outputs, -1) if binary.ternary else pack_bits(rows).reshape(outputs, -1)
    scale = [relax.const(binary.scale)] if binary.scale is not None else []
    note = ", ternary weights (sign and nonzero planes)" if binary.ternary else ""
    if len(shape_of(packed)) == 3:  # a ternary activation's sign and nonzero planes [2, N, KW]
        ctx.fused("ternary_dense", f"dense {taps}->{outputs} on a ternary activation (sign and nonzero planes){note}",
                  data)
        return ctx.emit_kernel(
            lambda d, w, *alpha: bitserial.dot_to_float_nchw(bitserial.ternary_dense_dot(d, w), *alpha),
            packed, relax.const(weight_bits), *scale, op="ternary_dense", taps=taps, **binary.kernel_attrs(),
        )
    ctx.fused("binary_dense", f"dense {taps}->{outputs}{note}", data)
    if binary.ternary:  # the count of nonzero weights per output, minus taps
        offsets = relax.const((np.count_nonzero(rows.reshape(outputs, -1), axis=1) - taps).astype(np.int32))
        return ctx.emit_kernel(
            lambda d, w, k, *alpha: bitserial.dot_to_float_nchw(bitserial.binary_dense_dot(d, w, taps, k), *alpha),
            packed, relax.const(weight_bits), offsets, *scale, op="binary_dense", taps=taps, **binary.kernel_attrs(),
        )
    return ctx.emit_kernel(
        lambda d, w, *alpha: bitserial.dot_to_float_nchw(bitserial.binary_dense_dot(d, w, taps), *alpha),
        packed, relax.const(weight_bits), *scale, op="binary_dense", taps=taps, **binary.kernel_attrs(),
    )
