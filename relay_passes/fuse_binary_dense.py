"""Rewrite ``matmul(unpack(p), W)`` (also through a flatten) with binary weights into XNOR-popcount.

Weights: ±1, or ±alpha per output (see ``fuse_binary_conv2d``), with exact zeros or not, or TTQ's
``{-a, 0, +b}`` (``2 * O`` outputs, ``b * P - a * N`` after the kernel, as for a conv).

A flatten of NCHW bits orders features channel-major; the packed tensor is channels-last, so the
weight's rows are permuted to (H, W, C) order before packing: no data movement at run time.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from bnn_tvm.schedules import bitserial

from .analysis.patterns import packed_features
from .analysis.weights import AsymmetricWeights, BinaryWeights, split_asymmetric, split_scale
from .common import PassLog, RuleContext, op_name, pack_bits, pack_planes, rule_pass
from .kernels import emit_difference


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
        asymmetric = split_asymmetric(weight.T)
        if isinstance(asymmetric, str):
            ctx.keep_float(f"{binary}, nor TTQ's {{-a, 0, +b}}: {asymmetric}")
            return None
        return fuse_asymmetric_dense(ctx, data, features, asymmetric)
    packed, _ = features
    ternary_input = (ctx.bnn_kernel(packed) or ("",))[0] == "pack_ternary"  # sign and nonzero words
    taps, outputs = weight.shape
    note = ", ternary weights (sign and nonzero planes)" if binary.ternary else ""
    if ternary_input:
        ctx.fused("ternary_dense", f"dense {taps}->{outputs} on a ternary activation (sign and nonzero planes){note}",
                  data)
    else:
        ctx.fused("binary_dense", f"dense {taps}->{outputs}{note}", data)
    return dense_kernel(ctx, features, binary, ternary_input)


def fuse_asymmetric_dense(ctx: RuleContext, data, features, weights: AsymmetricWeights):
    """TTQ's ``{-a, 0, +b}`` weights, as for a conv (``fuse_binary_conv2d.fuse_asymmetric_conv2d``):
    one kernel over the ``2 * O`` outputs ``b * P`` and ``a * N``, then ``b * P - a * N``."""
    packed, _ = features
    ternary_input = (ctx.bnn_kernel(packed) or ("",))[0] == "pack_ternary"
    outputs, taps = weights.positive.shape
    name = "ternary_dense" if ternary_input else "binary_dense"
    ctx.fused(name, f"dense {taps}->{outputs}" + (" on a ternary activation (sign and nonzero planes)" if ternary_input
                                                   else "")
              + f", TTQ weights {{-a, 0, +b}}: positive and negative taps as 2x{outputs} ternary-weight outputs "
              "(P, N), b*P - a*N in float", data)
    both = ctx.builder_.emit(dense_kernel(ctx, features, weights.halves(), ternary_input),
                             ctx.logged_name("ttq_halves"))
    return emit_difference(ctx, both)


def dense_kernel(ctx: RuleContext, features, binary: BinaryWeights, ternary_input: bool):
    """The dense kernel on the packed ``features`` (``packed_features``) with ``binary`` weights
    ``[O, K]``; ``ternary_input``: the features are sign and nonzero words."""
    packed, feature_shape = features
    outputs, taps = binary.signs.shape
    rows = binary.signs.reshape((outputs,) + tuple(feature_shape))  # [O, C(, H, W)]
    if rows.ndim == 4:
        rows = rows.transpose(0, 2, 3, 1)  # [O, H, W, C]: the packed layout, channels padded per position
    weight_bits = pack_planes(rows).reshape(2, outputs, -1) if binary.ternary else pack_bits(rows).reshape(outputs, -1)
    scale = [relax.const(binary.scale)] if binary.scale is not None else []
    attrs = binary.kernel_attrs()
    if ternary_input:
        return ctx.emit_kernel(
            lambda d, w, *alpha: bitserial.dot_to_float_nchw(bitserial.ternary_dense_dot(d, w), *alpha),
            packed, relax.const(weight_bits), *scale, op="ternary_dense", taps=taps, **attrs,
        )
    if binary.ternary:  # the count of nonzero weights per output, minus taps
        offsets = relax.const((np.count_nonzero(rows.reshape(outputs, -1), axis=1) - taps).astype(np.int32))
        return ctx.emit_kernel(
            lambda d, w, k, *alpha: bitserial.dot_to_float_nchw(bitserial.binary_dense_dot(d, w, taps, k), *alpha),
            packed, relax.const(weight_bits), offsets, *scale, op="binary_dense", taps=taps, **attrs,
        )
    return ctx.emit_kernel(
        lambda d, w, *alpha: bitserial.dot_to_float_nchw(bitserial.binary_dense_dot(d, w, taps), *alpha),
        packed, relax.const(weight_bits), *scale, op="binary_dense", taps=taps, **attrs,
    )


def fuse_binary_dense(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    return rule_pass(__name__, rewrite, logs)
