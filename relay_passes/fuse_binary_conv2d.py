"""Rewrite ``conv2d(unpack(p), W)`` with constant ±1 weights into an XNOR-popcount conv on ``p``.

Weights are packed at compile time. Zero padding is exact: the kernel pads with -1 bits and adds
a per-position correction, so the result equals the float conv's integer output everywhere.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from schedules import bitserial

from .common import RuleContext, is_bipolar, op_name, pack_bits, shape_of


def padding_correction(weight: np.ndarray, in_hw, strides, padding) -> np.ndarray:
    """int32 ``[OC, OH, OW]``: what the -1 bits at padded taps took away, added back.

    A padded tap holds 0 in the float model; the kernel counts it as -1, contributing ``-w``.
    The correction is the sum of ``w`` over the padded taps of each output position.
    """
    oc, _, kh, kw = weight.shape
    (h, w), (sh, sw), (pt, pl, pb, pr) = in_hw, strides, padding
    oh, ow = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
    rows = np.arange(oh)[:, None] * sh - pt + np.arange(kh)[None, :]  # [OH, KH]
    cols = np.arange(ow)[:, None] * sw - pl + np.arange(kw)[None, :]  # [OW, KW]
    row_out = (rows < 0) | (rows >= h)
    col_out = (cols < 0) | (cols >= w)
    padded = row_out[:, None, :, None] | col_out[None, :, None, :]  # [OH, OW, KH, KW]
    tap_sums = weight.sum(axis=1)  # [OC, KH, KW]
    return np.einsum("okl,yxkl->oyx", tap_sums, padded.astype(weight.dtype)).astype(np.int32)


def conv_is_plain(attrs) -> bool:
    return (
        int(attrs.groups) == 1
        and all(int(d) == 1 for d in attrs.dilation)
        and str(attrs.data_layout) == "NCHW"
        and str(attrs.kernel_layout) == "OIHW"
        and str(attrs.out_layout) == "NCHW"
    )


def fuse_binary_conv2d(ctx: RuleContext, call):
    if op_name(call) != "relax.nn.conv2d" or not conv_is_plain(call.attrs):
        return None
    data, weight_expr = call.args
    kernel = ctx.bnn_kernel(data)
    weight = ctx.constant(weight_expr)
    if kernel is None or kernel[0] != "unpack_sign" or not is_bipolar(weight):
        return None
    packed = ctx.kernel_inputs(data)[0]
    strides = tuple(int(s) for s in call.attrs.strides)
    padding = tuple(int(p) for p in call.attrs.padding)
    weight = weight.astype(np.int64)
    oc, c, kh, kw = weight.shape
    correction = padding_correction(weight, shape_of(data)[2:], strides, padding)
    packed_weight = pack_bits(weight.transpose(0, 2, 3, 1))  # [OC, KH, KW, CW]
    taps = c * kh * kw
    ctx.log.rewrites.append(f"conv2d {oc}x{c}x{kh}x{kw} stride {strides} pad {padding} -> binary_conv2d")
    return ctx.emit_kernel(
        lambda d, w, k: bitserial.dot_to_float_nchw(
            bitserial.binary_conv2d_dot(d, w, k, taps, strides, padding)
        ),
        packed,
        relax.const(packed_weight),
        relax.const(correction),
        op="binary_conv2d",
        taps=taps,
        strides=list(strides),
        padding=list(padding),
    )
