"""Rewrite ``matmul(unpack(p), W)`` (also through a flatten) with binary weights into XNOR-popcount.

Weights: ±1, or ±alpha per output (see ``fuse_binary_conv2d``).

A flatten of NCHW bits orders features channel-major; the packed tensor is channels-last, so the
weight's rows are permuted to (H, W, C) order before packing: no data movement at run time.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from bnn_tvm.schedules import bitserial

from .analysis.patterns import packed_features
from .analysis.weights import split_scale
from .common import PassLog, RuleContext, op_name, pack_bits, pack_planes, rule_pass


def rewrite(ctx: RuleContext, call):
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
    if (ctx.bnn_kernel(packed) or ("",))[0] == "pack_ternary":  # a ternary activation's sign and nonzero words
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


def fuse_binary_dense(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    return rule_pass(__name__, rewrite, logs)
