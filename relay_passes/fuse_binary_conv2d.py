"""Rewrite ``conv2d(unpack(p), W)`` with binary weights into an XNOR-popcount conv on ``p``.

Weights are packed at compile time. Accepted weights: constant ±1, or ±alpha per output channel
(a scale folded into the weights by an exporter: IR-Net's powers of two, Brevitas' per-tensor
constants). The kernel multiplies its integer result by alpha. A power of two makes that exact;
any other alpha differs from the float conv's sum of ±alpha terms by float rounding, which
``FoldThresholds`` takes into account (see ``analysis.rounding.weight_scale_error``).

TTQ's asymmetric ternary weights ``{-a, 0, +b}`` (per layer or per output channel) run as one
kernel over ``2 * OC`` ternary-weight channels, the masks ``[W > 0]`` and ``[W < 0]`` scaled by
``b`` and ``a`` (``analysis.weights.AsymmetricWeights``), and ``b * P - a * N`` in float after it:
within float rounding of the float conv's sum of the ``±a, ±b`` terms, not bit-identical to it.

Padding is exact in all three forms: the conv's own zero padding (pad with -1 bits, add back a
per-border-class correction), and an explicit ``Pad`` with value -1 or +1 before an unpadded conv.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from bnn_tvm.schedules import bitserial

from .analysis.patterns import binarized_conv_input, plain_conv_reason
from .analysis.weights import AsymmetricWeights, BinaryWeights, split_asymmetric, split_scale
from .common import PassLog, RuleContext, op_name, pack_bits, rule_pass, shape_of
from .kernels import emit_difference


def padding_correction(weight: np.ndarray, in_hw, strides, padding, dilation=(1, 1)):
    """What the -1 bits at zero-padded taps took away, to add back: ``(table [NY, NX, OC],
    ycls [OH], xcls [OW])`` int32, ``bitserial.BorderTable``'s arrays.

    A padded tap holds 0 in the float model; the kernel counts it as -1, contributing ``-w``.
    The correction of an output position is the sum of ``w`` over its padded taps. It depends
    only on which kernel rows and columns fall outside the input (the position's border class),
    so it is computed and stored per class: a few entries per channel, never ``[OC, OH, OW]``
    (a 4096x4096 input took gigabytes when it was).
    """
    _, _, kh, kw = weight.shape
    (h, w), (sh, sw), (pt, pl, _, _), (dh, dw) = in_hw, strides, padding, dilation
    oh, ow = output_hw(in_hw, (kh, kw), strides, padding, dilation)
    rows = np.arange(oh)[:, None] * sh - pt + dh * np.arange(kh)[None, :]  # [OH, KH]
    cols = np.arange(ow)[:, None] * sw - pl + dw * np.arange(kw)[None, :]  # [OW, KW]
    row_keys, row_class = np.unique((rows < 0) | (rows >= h), axis=0, return_inverse=True)  # [NY, KH], [OH]
    col_keys, col_class = np.unique((cols < 0) | (cols >= w), axis=0, return_inverse=True)  # [NX, KW], [OW]
    padded = row_keys[:, None, :, None] | col_keys[None, :, None, :]  # [NY, NX, KH, KW]
    tap_sums = weight.sum(axis=1)  # [OC, KH, KW]
    table = np.einsum("okl,yxkl->yxo", tap_sums, padded.astype(weight.dtype)).astype(np.int32)
    return table, row_class.reshape(-1).astype(np.int32), col_class.reshape(-1).astype(np.int32)


def multibit_offsets(weight: np.ndarray, levels: int, offset: int = 0) -> np.ndarray:
    """int32 ``[OC]``, the constant term of ``bitserial.multibit_conv2d_dot`` (``weight``: ±1
    ``[OC, ...]``): ``levels`` (``2^bits - 1``) times each output channel's count of +1 weights,
    plus ``offset`` times the sum of its weights (a ``Quant``'s ``q - z = u + offset``,
    ``LevelCode.offset``)."""
    flat = weight.reshape(len(weight), -1)
    return (levels * (flat > 0).sum(axis=1) + offset * flat.sum(axis=1)).astype(np.int32)


def fuse_multibit_conv2d(ctx: RuleContext, call, planes, weight, scale, strides, padding, extra):
    """The bit-plane conv: k-bit activations times binary weights."""
    code = bitserial.LevelCode.of(ctx.bnn_kernel(planes)[1])
    oc, c, kh, kw = weight.shape
    taps = c * kh * kw
    what = f"{code.bits}-bit planes" + ("" if code.scale is None else f" of a Quant (scale {code.scale:g})")
    ctx.fused("multibit_conv2d", f"conv2d {oc}x{c}x{kh}x{kw} stride {strides} pad {padding} on {what}")
    offsets = multibit_offsets(weight, (1 << code.bits) - 1, code.offset)
    inputs = [planes, relax.const(pack_bits(weight.transpose(0, 2, 3, 1))), relax.const(offsets)]
    if scale is not None:
        inputs.append(relax.const(scale))
    # levels: the bound of |q - z| (the integer result's range); DoReFa also divides by it
    activation = {"levels": code.bound}
    if code.scale is not None:
        activation["activation_scale"] = code.scale
    if code.pad_level and any(padding):
        activation["pad_level"] = code.pad_level
    return ctx.emit_kernel(
        lambda d, w, k, *alpha: bitserial.dot_to_float_nchw(
            bitserial.multibit_conv2d_dot(d, w, k, strides, padding, code.pad_level, c), *alpha,
            levels=code.bound, activation_scale=code.scale,
        ),
        *inputs,
        op="multibit_conv2d",
        taps=taps,
        strides=list(strides),
        padding=list(padding),
        **activation,
        **extra,
    )


def fuse_ternary_conv2d(ctx: RuleContext, planes, binary: BinaryWeights, strides, padding, dilation):
    """The conv of a ternary activation (sign and nonzero planes) with binary or ternary weights."""
    oc, c, kh, kw = binary.signs.shape
    detail = f"conv2d {oc}x{c}x{kh}x{kw} stride {strides} pad {padding}"
    ctx.fused("ternary_conv2d", detail + (f" dilation {dilation}" if dilation != (1, 1) else "")
              + " on a ternary activation (sign and nonzero planes)" + (", ternary weights" if binary.ternary else ""))
    return ternary_conv2d_kernel(ctx, planes, binary, strides, padding, dilation)


def ternary_conv2d_kernel(ctx: RuleContext, planes, binary: BinaryWeights, strides, padding, dilation):
    """The ternary conv kernel on sign and nonzero ``planes``."""
    oc, c, kh, kw = binary.signs.shape
    inputs = [planes, relax.const(binary.planes())]
    if binary.scale is not None:
        inputs.append(relax.const(binary.scale))
    return ctx.emit_kernel(
        lambda d, w, *alpha: bitserial.dot_to_float_nchw(
            bitserial.ternary_conv2d_dot(d, w, strides, padding, dilation), *alpha
        ),
        *inputs,
        op="ternary_conv2d",
        taps=c * kh * kw,
        strides=list(strides),
        padding=list(padding),
        **({"dilation": list(dilation)} if dilation != (1, 1) else {}),
        **binary.kernel_attrs(),
    )


def fuse_asymmetric_conv2d(ctx: RuleContext, data, packed, ternary: bool, weights: AsymmetricWeights, strides,
                           padding, dilation, explicit):
    """TTQ's ``{-a, 0, +b}`` weights: one binary (``ternary``: ternary-activation) kernel over the
    ``2 * OC`` ternary-weight channels ``b * P`` and ``a * N`` (``AsymmetricWeights.halves``),
    then ``b * P - a * N`` in float32. Each product and the difference round once, the float
    conv's sum of ``±a, ±b`` terms rounds in its own order: equal within float rounding (a
    binarizer after it is checked by ``FoldChannelOpsIntoPack``, ``analysis.rounding.asymmetric_margin``).
    The difference is a kernel of its own (``kernels.emit_difference``), which takes the float
    ops after it as its epilogue (``FoldFloatEpilogues``, ``FoldResidualAdd``); on CPUs it then
    moves into the conv kernel (``FuseTtqDifference``). The halves are interleaved per block of
    output channels (``AsymmetricWeights.halves``)."""
    oc, c, kh, kw = weights.positive.shape
    halves = weights.halves()
    per_layer = all(np.unique(v[v > 0]).size <= 1 for v in (weights.plus, weights.minus))
    detail = (f"conv2d {oc}x{c}x{kh}x{kw} stride {strides} pad {padding}"
              + (f" dilation {dilation}" if dilation != (1, 1) else "")
              + (" on a ternary activation (sign and nonzero planes)" if ternary else "")
              + (f" (explicit Pad {explicit[0]:+g})" if explicit is not None else "")
              + f", TTQ weights {{-a, 0, +b}} per {'layer' if per_layer else 'output channel'}: positive and "
              f"negative taps as 2x{oc} ternary-weight channels (P, N), b*P - a*N in float")
    if ternary:
        ctx.fused("ternary_conv2d", detail)
        kernel = ternary_conv2d_kernel(ctx, packed, halves, strides, padding, dilation)
    elif explicit is not None:
        ctx.fused("binary_conv2d", detail, data)  # the Pad is in the kernel
        kernel = binary_conv2d_kernel(ctx, packed, halves, strides, explicit[1], dilation, explicit[0])
    else:
        ctx.fused("binary_conv2d", detail)
        kernel = binary_conv2d_kernel(ctx, packed, halves, strides, padding, dilation)
    both = ctx.builder_.emit(kernel, ctx.logged_name("ttq_halves"))
    ctx.alias((ctx.binding,), both)  # FuseTtqDifference's fused kernel is this conv's
    return emit_difference(ctx, both)


def asymmetric_or_reason(reason: str, weight: np.ndarray, k_bit: bool, groups: int):
    """``(AsymmetricWeights, None)`` when weights that are not ``±alpha`` (or 0) per channel
    (``reason``) are TTQ's ``{-a, 0, +b}`` on a conv that can run them, else ``(None, why)``."""
    if k_bit:
        return None, reason
    weights = split_asymmetric(weight)
    if isinstance(weights, str):
        return None, f"{reason}, nor TTQ's {{-a, 0, +b}}: {weights}"
    if groups != 1:
        return None, "TTQ's {-a, 0, +b} weights on a grouped conv"
    return weights, None


def rewrite(ctx: RuleContext, call):
    if op_name(call) != "relax.nn.conv2d":
        return None
    data, weight_expr = call.args
    source = binarized_conv_input(ctx, data)
    if source is None:
        return None
    packed, explicit = source
    ternary = (ctx.bnn_kernel(packed) or ("",))[0] == "pack_ternary"
    groups = int(call.attrs.groups)
    reason = plain_conv_reason(call.attrs, shape_of(data)[1])
    weight = ctx.constant(weight_expr)
    if reason is None and weight is None:
        reason = "weights are not constant"
    if reason is None:
        binary = split_scale(weight, ternary=len(shape_of(packed)) == 4 or ternary)  # k-bit planes: ±alpha only
        if isinstance(binary, str):
            binary, reason = asymmetric_or_reason(binary, weight, len(shape_of(packed)) == 5, groups)
    strides = tuple(int(s) for s in call.attrs.strides)
    padding = tuple(int(p) for p in call.attrs.padding)
    dilation = tuple(int(d) for d in call.attrs.dilation)
    if reason is None and explicit is not None and any(padding):
        reason = "an explicit Pad followed by a padded conv"
    if reason is None and dilation != (1, 1) and len(shape_of(packed)) == 5 and not ternary:
        reason = "a dilated conv on k-bit activations"
    if reason is None and groups != 1 and (len(shape_of(packed)) == 5 or ternary):
        reason = "a grouped conv on k-bit or ternary activations"
    if reason is not None:
        ctx.keep_float(reason)
        return None
    if isinstance(binary, AsymmetricWeights):
        return fuse_asymmetric_conv2d(ctx, data, packed, ternary, binary, strides, padding, dilation, explicit)
    if ternary:
        return fuse_ternary_conv2d(ctx, packed, binary, strides, padding, dilation)
    if len(shape_of(packed)) == 5:  # k-bit planes
        weight, scale, extra = binary.signs.astype(np.int64), binary.scale, binary.kernel_attrs()
        return fuse_multibit_conv2d(ctx, call, packed, weight, scale, strides, padding, extra)
    oc, c, kh, kw = binary.signs.shape
    detail = f"conv2d {oc}x{c * groups}x{kh}x{kw} stride {strides} pad {padding}"
    if dilation != (1, 1):
        detail += f" dilation {dilation}"
    if explicit is not None:
        detail += f" (explicit Pad {explicit[0]:+g})"
    if binary.ternary:
        detail += ", ternary weights (sign and nonzero planes)"
    if groups != 1:
        ctx.fused("binary_conv2d", f"{detail} groups {groups}: one binary conv per group, concatenated")
        return grouped_binary_conv2d(ctx, data, packed, explicit, binary, groups, strides, padding, dilation)
    ctx.fused("binary_conv2d", detail, *([data] if explicit is not None else []))  # the Pad is in the kernel
    if explicit is not None:
        return binary_conv2d_kernel(ctx, packed, binary, strides, explicit[1], dilation, explicit[0])
    return binary_conv2d_kernel(ctx, packed, binary, strides, padding, dilation)


def grouped_binary_conv2d(ctx: RuleContext, data, packed, explicit, binary, groups, strides, padding, dilation):
    """A grouped conv as one binary conv per group on that group's channels, outputs
    concatenated. Each group's bits: a slice of the packed words when groups are whole words,
    else the group's channels of the ±1 tensor ``data`` (the conv's own input, an explicit ±1
    pad included) packed on their own, so that their channel padding bits are 0."""
    oc, c = binary.signs.shape[:2]
    per_group = oc // groups
    whole_words = explicit is None and c % bitserial.WORD_BITS == 0
    outputs = []
    for g in range(groups):
        if whole_words:
            words = c // bitserial.WORD_BITS
            bits = ctx.builder_.emit(relax.op.strided_slice(packed, axes=[3], begin=[g * words], end=[(g + 1) * words]),
                                     "group_words")
        else:
            part = ctx.builder_.emit(relax.op.strided_slice(data, axes=[1], begin=[g * c], end=[(g + 1) * c]), "group")
            bits = ctx.builder_.emit(ctx.emit_kernel(bitserial.pack_sign, part, op="pack_sign"), "packed")
        rows = slice(g * per_group, (g + 1) * per_group)
        part = BinaryWeights(binary.signs[rows], *(None if v is None else v[rows] for v in (binary.scale, binary.deviation)))
        kernel = binary_conv2d_kernel(ctx, bits, part, strides, padding, dilation)
        outputs.append(ctx.builder_.emit(kernel, "group_conv"))
    return relax.op.concat(outputs, axis=1)


def binary_conv2d_kernel(ctx: RuleContext, packed, binary: BinaryWeights, strides, padding, dilation, pad_value=None):
    """The XNOR-popcount conv kernel on ``packed`` bits with ``binary`` weights (signs ``[OC, C,
    KH, KW]`` ±1, or ternary with zeros, and a per-channel scale): zero padding, or with
    ``pad_value`` an explicit ±1 pad.

    Ternary weights (sign and nonzero planes) count only the taps with a nonzero weight, ``nnz[o]
    - 2 * popcount((a XOR s) AND m)``: the correction table also holds ``nnz[o] - taps``, so
    the kernel's ``taps - 2 m + correction`` stays one formula."""
    weight = binary.signs.astype(np.int64)
    oc, c, kh, kw = weight.shape
    in_hw = shape_of(packed)[1:3]
    pad_ones = pad_value is not None and pad_value > 0
    if pad_value is None:
        table, ycls, xcls = padding_correction(weight, in_hw, strides, padding, dilation)
    else:  # an explicit ±1 pad is in the bits: one class, nothing to add back
        oh, ow = output_hw(in_hw, (kh, kw), strides, padding, dilation)
        table, ycls, xcls = np.zeros((1, 1, oc), np.int32), np.zeros(oh, np.int32), np.zeros(ow, np.int32)
    taps = c * kh * kw
    if binary.ternary:
        nonzeros = np.count_nonzero(weight.reshape(oc, -1), axis=1)
        table = (table + (nonzeros - taps)[None, None, :]).astype(np.int32)
    inputs = [packed, relax.const(binary.planes()), *(relax.const(v) for v in (table, ycls, xcls))]
    if binary.scale is not None:
        inputs.append(relax.const(binary.scale))
    return ctx.emit_kernel(
        lambda d, w, t, yc, xc, *alpha: bitserial.dot_to_float_nchw(
            bitserial.binary_conv2d_dot(d, w, bitserial.BorderTable(t, yc, xc), taps, strides, padding, pad_ones, dilation),
            *alpha,
        ),
        *inputs,
        op="binary_conv2d",
        taps=taps,
        strides=list(strides),
        padding=list(padding),
        pad_ones=int(pad_ones),
        # only where it says something: the attributes are part of a tuning record's workload
        **({"dilation": list(dilation)} if dilation != (1, 1) else {}),
        **binary.kernel_attrs(),
    )


output_hw = bitserial.conv_output_hw


def fuse_binary_conv2d(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    return rule_pass(__name__, rewrite, logs)
