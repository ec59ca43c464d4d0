"""Compute definitions of the binary (XNOR-popcount) operators, target independent.

Conventions shared by every operator here and by the passes that emit them:

* A binary value is +1 or -1. Packed, bit 1 means +1 and bit 0 means -1.
* Activations are packed along channels, channels last: a float NCHW tensor becomes
  ``uint32[N, H, W, ceil(C / 32)]`` (2-D ``[N, C]`` becomes ``[N, ceil(C / 32)]``). Bit ``b`` of
  word ``w`` holds channel ``32 * w + b``. Channel padding bits are 0 in activations *and* in
  weights, so they never contribute to a popcount.
* Over K real taps the bipolar dot product is ``K - 2 * popcount(a XOR w)``.
* Spatial zero padding of the float model feeds 0, which is neither +1 nor -1. The kernel pads
  with 0 bits (-1) and adds back what the padded taps took away, computed from the constant
  weights per border class (``BorderTable``; ``relay_passes.fuse_binary_conv2d.padding_correction``),
  which makes the result exact.

The schedules live beside this file, one target family per module; these functions only say
*what* is computed (as TVM's ``topi`` does).
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from typing import NamedTuple

from tvm import te, tirx

WORD_BITS = 32
WORD_DTYPE = "uint32"


def num_words(channels: int) -> int:
    return (channels + WORD_BITS - 1) // WORD_BITS


def _bit(value, b):
    """``1 << b`` as a word when ``value`` holds, else 0 (a select, so nothing is read out of bounds)."""
    one = tirx.const(1, WORD_DTYPE)
    return tirx.Select(value, one << b.astype(WORD_DTYPE), tirx.const(0, WORD_DTYPE))


def pack_sign(x: te.Tensor, *consts: te.Tensor, pair_groups: int = 0, strict: bool = False,
              steps: tuple[str, ...] = (), within: bool = False) -> te.Tensor:
    """Binarize ``x >= 0 -> +1`` (``strict``: ``x > 0 -> +1``) and pack along channels (axis 1),
    channels last.

    ``steps`` (``EPILOGUE_OPS`` names) with ``consts`` (one value per channel each): per-channel
    float ops applied to ``x`` first, each rounded as the float graph rounds it
    (``apply_epilogue``), so that a batch norm before the binarizer costs no pass of its own.
    ``within``: ``consts`` are float bounds ``low, high`` per channel instead, +1 exactly when
    ``low <= x <= high`` (a monotone chain folded at compile time: two compares, no arithmetic).

    ``x``: float ``[N, C, H, W]`` or ``[N, C]``. Bits of different channels never overlap, so a
    sum of the shifted bits is their OR.

    ``pair_groups`` > 0 packs ``2C`` channels instead: per group of ``C / pair_groups`` channels,
    the binarized ``x`` and then the binarized ``-x`` (bit set where ``x <= 0``). That is the
    ternary ``Sign(x) = (b(x) - b(-x)) / 2`` as two bipolar halves (see ``split_ternary_sign``).
    """
    channels = int(x.shape[1])
    packed_channels = 2 * channels if pair_groups else channels
    words = num_words(packed_channels)
    b = te.reduce_axis((0, WORD_BITS), name="bit")

    if within and len(consts) != 2:
        raise ValueError(f"pack_sign: within needs two per-channel bounds, got {len(consts)} constants")
    if not within and len(steps) != len(consts):
        raise ValueError(f"pack_sign: steps {steps} need {len(steps)} per-channel constants, got {len(consts)}")
    if steps and pair_groups:
        raise ValueError("pack_sign: per-channel steps before a pair of halves are not supported")

    def decision(c, read):
        """Bit ``c`` of the packed channels; ``read(channel)`` is the float value there."""
        if not pair_groups:
            k = tirx.min(c, channels - 1)
            if within:
                value = read(k)
                return tirx.all(c < channels, value >= consts[0][k], value <= consts[1][k])
            value = apply_epilogue(read(k), [const[k] for const in consts], steps)
            return tirx.all(c < channels, value > 0 if strict else value >= 0)
        per_group = channels // pair_groups
        group, slot = c // (2 * per_group), c % (2 * per_group)
        value = read(tirx.min(group * per_group + slot % per_group, channels - 1))
        keep = tirx.if_then_else(slot < per_group, value >= 0, value <= 0)
        return tirx.all(c < packed_channels, keep)

    if len(x.shape) == 4:
        n, _, h, w = x.shape

        def body(i, y, z, cw):
            c = cw * WORD_BITS + b
            return te.sum(_bit(decision(c, lambda k: x[i, k, y, z]), b), axis=b)

        return te.compute((n, h, w, words), body, name="pack_sign")
    n = x.shape[0]

    def body2(i, cw):
        c = cw * WORD_BITS + b
        return te.sum(_bit(decision(c, lambda k: x[i, k]), b), axis=b)

    return te.compute((n, words), body2, name="pack_sign")


def unpack_sign(packed: te.Tensor, channels: int, dtype: str = "float32") -> te.Tensor:
    """Inverse of :func:`pack_sign`: bits back to a ±1 tensor in NCHW (or ``[N, C]``)."""

    def value(word, c):
        bit = (word >> (c % WORD_BITS).astype(WORD_DTYPE)) & tirx.const(1, WORD_DTYPE)
        return tirx.Select(bit == 1, tirx.const(1, dtype), tirx.const(-1, dtype))

    if len(packed.shape) == 4:
        n, h, w, _ = packed.shape
        return te.compute(
            (n, channels, h, w),
            lambda i, c, y, z: value(packed[i, y, z, c // WORD_BITS], c),
            name="unpack_sign",
        )
    n = packed.shape[0]
    return te.compute(
        (n, channels), lambda i, c: value(packed[i, c // WORD_BITS], c), name="unpack_sign"
    )


def pack_ternary(x: te.Tensor) -> te.Tensor:
    """``Sign(x)`` in {-1, 0, +1} as two bit planes packed along channels, channels last, their
    words interleaved: ``[N, H, W, 2 * CW]`` (or ``[N, 2 * CW]`` for ``[N, C]``), word ``2 w``
    the signs of channel word ``w`` (bit set where ``x > 0``), word ``2 w + 1`` its nonzeros
    (bit set where ``x != 0``). A zero (and a channel padding bit) is 0 in both, so it drops out
    of every product (``ternary_conv2d_dot``). Interleaved, the two words a step reads are
    adjacent: one load pair, and a tensor intrinsic can take them as one 2-word region.
    """
    channels = int(x.shape[1])
    words = num_words(channels)
    b = te.reduce_axis((0, WORD_BITS), name="bit")

    def bit(word, read):
        c = (word // 2) * WORD_BITS + b
        value = read(tirx.min(c, channels - 1))
        zero = tirx.const(0, x.dtype)
        # even words: x > 0; odd words: x != 0, i.e. also x < 0 (as And/Or: a select on the word's
        # parity would not vectorise)
        return _bit(tirx.all(c < channels, tirx.any(value > zero, tirx.all(word % 2 == 1, value < zero))), b)

    if len(x.shape) == 4:
        n, _, h, w = x.shape
        return te.compute((n, h, w, 2 * words), lambda i, y, z, cw: te.sum(bit(cw, lambda k: x[i, k, y, z]), axis=b),
                          name="pack_sign")  # the CPU schedule of pack_sign
    n = x.shape[0]
    return te.compute((n, 2 * words), lambda i, cw: te.sum(bit(cw, lambda k: x[i, k]), axis=b), name="pack_sign")


def unpack_ternary(planes: te.Tensor, channels: int, dtype: str = "float32") -> te.Tensor:
    """Inverse of :func:`pack_ternary`: the interleaved words back to ``Sign(x)`` in NCHW (or ``[N, C]``)."""

    def value(index, c):
        shift = (c % WORD_BITS).astype(WORD_DTYPE)
        one = tirx.const(1, WORD_DTYPE)
        positive = (planes[(*index, 2 * (c // WORD_BITS))] >> shift) & one
        nonzero = (planes[(*index, 2 * (c // WORD_BITS) + 1)] >> shift) & one
        return tirx.Select(nonzero == 0, tirx.const(0, dtype),
                           tirx.Select(positive == 1, tirx.const(1, dtype), tirx.const(-1, dtype)))

    if len(planes.shape) == 4:
        n, h, w, _ = planes.shape
        return te.compute((n, channels, h, w), lambda i, c, y, z: value((i, y, z), c), name="unpack_ternary")
    n = planes.shape[0]
    return te.compute((n, channels), lambda i, c: value((i,), c), name="unpack_ternary")


def _pad_word(channels: int, words: int):
    """The packed word of a +1 pad value: all real channel bits set, channel padding bits 0."""
    full = (1 << WORD_BITS) - 1
    last = (1 << (channels - (words - 1) * WORD_BITS)) - 1
    return lambda *index: tirx.Select(
        index[-1] == words - 1, tirx.const(last, WORD_DTYPE), tirx.const(full, WORD_DTYPE)
    )


def padded_words(data: te.Tensor, padding: tuple[int, int, int, int], fill=None) -> te.Tensor:
    """Packed words ``[..., H, W, CW]`` with the two spatial axes padded (top, left, bottom,
    right) by 0 words, or by ``fill(*index)`` (the padded word's index, channel word last);
    ``data`` itself when unpadded. The block is ``pad_bits``, which the CPU schedules place by
    name."""
    if not any(padding):
        return data
    *lead, h, w, cw = (int(v) for v in data.shape)
    pt, pl, pb, pr = padding
    fill = fill or (lambda *index: tirx.const(0, WORD_DTYPE))

    def word(*index):
        *outer, y, x, c = index
        inside = tirx.all(y >= pt, y < h + pt, x >= pl, x < w + pl)
        return tirx.if_then_else(inside, data[(*outer, y - pt, x - pl, c)], fill(*index))

    return te.compute((*lead, h + pt + pb, w + pl + pr, cw), word, name="pad_bits")


def conv_output_hw(in_hw, kernel, strides, padding, dilation=(1, 1)) -> tuple[int, int]:
    """A conv's output rows and columns (``padding``: top, left, bottom, right)."""
    (h, w), (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = in_hw, kernel, strides, padding, dilation
    return (h + pt + pb - dh * (kh - 1) - 1) // sh + 1, (w + pl + pr - dw * (kw - 1) - 1) // sw + 1


def kernel_dilation(attrs) -> tuple[int, int]:
    """A binary conv kernel's ``bnn.dilation`` attribute (none on kernels made before it existed)."""
    return tuple(int(d) for d in attrs["bnn.dilation"]) if "bnn.dilation" in attrs else (1, 1)


class BorderTable(NamedTuple):
    """A conv's per-position integer correction as a table over border classes: output row
    ``y`` and column ``x`` get ``table[ycls[y], xcls[x], o]``. Positions whose window has the
    same taps in the padding share a class (a 3x3 conv with padding 1: 3 x 3 classes), so the
    table is ``[NY, NX, OC]`` int32 beside two index vectors ``[OH]``, ``[OW]``, never a tensor
    as large as the output (a 4096x4096 image's ``[OC, OH, OW]`` took gigabytes to compile)."""

    table: te.Tensor
    ycls: te.Tensor
    xcls: te.Tensor

    def at(self, o, y, x):
        return self.table[self.ycls[y], self.xcls[x], o]


def binary_conv2d_dot(
    data: te.Tensor,
    weight: te.Tensor,
    correction: BorderTable,
    taps: int,
    strides: tuple[int, int],
    padding: tuple[int, int, int, int],
    pad_ones: bool = False,
    dilation: tuple[int, int] = (1, 1),
) -> te.Tensor:
    """Exact bipolar conv: int32 ``[N, OH, OW, OC]``.

    ``data``: packed ``[N, H, W, CW]``; ``weight``: packed ``[OC, KH, KW, CW]``, or ternary
    weights as sign and nonzero planes ``[2, OC, KH, KW, CW]`` (a zero weight's taps drop out of
    the popcount: ``weight_term``); ``correction``: the zero-padding correction per border class
    (all zeros when unpadded; for ternary weights it also holds ``nonzeros[o] - taps``);
    ``taps``: ``C * KH * KW`` real taps; ``padding``: top, left, bottom, right; ``dilation``:
    the distance between kernel taps. Padded taps are -1 bits, or +1 bits with ``pad_ones``
    (an explicit ``Pad`` with value +1; channel padding bits stay 0 so they still cancel).
    """
    n, h, w, cw = (int(v) for v in data.shape)
    oc, kh, kw, _ = (int(v) for v in weight.shape[-4:])
    sh, sw = strides
    dh, dw = dilation
    pt, pl, _, _ = padding
    oh, ow = conv_output_hw((h, w), (kh, kw), strides, padding, dilation)
    padded = padded_words(data, padding, _pad_word(taps // (kh * kw), cw) if pad_ones else None)
    mismatch = weight_term(weight)
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    rc = te.reduce_axis((0, cw), name="rc")
    mismatches = te.compute(
        (n, oh, ow, oc),
        lambda i, y, x, o: te.sum(
            tirx.popcount(mismatch(padded[i, y * sh + ry * dh, x * sw + rx * dw, rc], (o, ry, rx, rc))).astype(
                "int32"
            ),
            axis=[ry, rx, rc],
        ),
        name="mismatches",
    )
    return te.compute(
        (n, oh, ow, oc),
        lambda i, y, x, o: taps - 2 * mismatches[i, y, x, o] + correction.at(o, y, x),
        name="binary_conv2d_dot",
    )


def weight_term(weight: te.Tensor):
    """``(activation word, weight index) -> the word of mismatching taps``: ``a XOR w``, or for
    ternary weights (sign and nonzero planes, one more leading axis) ``(a XOR s) AND m``."""
    if len(weight.shape) in (2, 4):
        return lambda word, index: word ^ weight[index]
    return lambda word, index: (word ^ weight[(0, *index)]) & weight[(1, *index)]


def binary_dense_dot(data: te.Tensor, weight: te.Tensor, taps: int, offsets: te.Tensor | None = None) -> te.Tensor:
    """Exact bipolar dense: int32 ``[N, O]`` from packed ``[N, KW]`` and packed ``[O, KW]``; or
    with ternary weights (sign and nonzero planes ``[2, O, KW]``) and ``offsets`` int32 ``[O]``
    holding ``nonzeros[o] - taps``: ``nonzeros[o] - 2 * popcount((a XOR s) AND m)``."""
    n, kw = (int(v) for v in data.shape)
    out = int(weight.shape[-2])
    rk = te.reduce_axis((0, kw), name="rk")
    mismatch = weight_term(weight)
    mismatches = te.compute(
        (n, out),
        lambda i, o: te.sum(tirx.popcount(mismatch(data[i, rk], (o, rk))).astype("int32"), axis=rk),
        name="mismatches",
    )
    if offsets is None:
        return te.compute((n, out), lambda i, o: taps - 2 * mismatches[i, o], name="binary_dense_dot")
    return te.compute((n, out), lambda i, o: taps + offsets[o] - 2 * mismatches[i, o], name="binary_dense_dot")


def ternary_conv2d_dot(
    planes: te.Tensor,
    weight: te.Tensor,
    strides: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int] = (1, 1),
) -> te.Tensor:
    """Exact conv of a ternary activation (``pack_ternary``'s interleaved words ``[N, H, W, 2 *
    CW]``) with ±1 weights (packed ``[OC, KH, KW, CW]``), or ternary weights (sign and nonzero
    planes ``[2, OC, KH, KW, CW]``): int32 ``[N, OH, OW, OC]``.

    Over the taps where the activation is not 0 (nonzero bit m), ``a * w`` is +1 when the sign
    bit s equals the weight bit and -1 otherwise, so ``dot = nonzeros - 2 * popcount((s XOR w)
    AND m)``: one AND per word more than a binary conv. ``nonzeros`` (the window's count of m
    bits) does not depend on the output channel and is counted once per position. Zero padding
    is a 0 in both planes, the float model's 0 exactly: no correction.
    """
    n, h, w, cw = (int(v) for v in planes.shape)
    cw //= 2
    oc, kh, kw, _ = (int(v) for v in weight.shape[-4:])
    sh, sw = strides
    dh, dw = dilation
    pt, pl, _, _ = padding
    oh, ow = conv_output_hw((h, w), (kh, kw), strides, padding, dilation)
    padded = padded_words(planes, padding)
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    rc = te.reduce_axis((0, cw), name="rc")

    def nonzero_count(i, y, x):
        # read unpadded with a bounds check: the padded copy then has one reader (the tile)
        yy, xx = y * sh + ry * dh - pt, x * sw + rx * dw - pl
        inside = tirx.all(yy >= 0, yy < h, xx >= 0, xx < w)
        word = planes[i, tirx.max(tirx.min(yy, h - 1), 0), tirx.max(tirx.min(xx, w - 1), 0), 2 * rc + 1]
        return te.sum(tirx.if_then_else(inside, tirx.popcount(word).astype("int32"), 0), axis=[ry, rx, rc])

    rz = [te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, kw), name="rx"), te.reduce_axis((0, cw), name="rc")]
    if len(weight.shape) == 5:
        # ternary weights too: the taps where both are nonzero depend on the output channel,
        # counted in the same reduction (two popcounts per word): -dot = 2 popc(x & m) - popc(m)
        def signed_mismatches(i, y, x, o):
            yy, xx, c = y * sh + rz[0] * dh, x * sw + rz[1] * dw, rz[2]
            both = padded[i, yy, xx, 2 * c + 1] & weight[1, o, rz[0], rz[1], c]
            mismatch = (padded[i, yy, xx, 2 * c] ^ weight[0, o, rz[0], rz[1], c]) & both
            return te.sum(2 * tirx.popcount(mismatch).astype("int32") - tirx.popcount(both).astype("int32"), axis=rz)

        mismatches = te.compute((n, oh, ow, oc), signed_mismatches, name="mismatches")
        return te.compute((n, oh, ow, oc), lambda i, y, x, o: -mismatches[i, y, x, o], name="ternary_conv2d_dot")
    nonzeros = te.compute((n, oh, ow), nonzero_count, name="nonzeros")

    def masked_mismatches(i, y, x, o):
        yy, xx, c = y * sh + rz[0] * dh, x * sw + rz[1] * dw, rz[2]
        mismatch = (padded[i, yy, xx, 2 * c] ^ weight[o, rz[0], rz[1], c]) & padded[i, yy, xx, 2 * c + 1]
        return te.sum(tirx.popcount(mismatch).astype("int32"), axis=rz)

    mismatches = te.compute((n, oh, ow, oc), masked_mismatches, name="mismatches")
    return te.compute(
        (n, oh, ow, oc), lambda i, y, x, o: nonzeros[i, y, x] - 2 * mismatches[i, y, x, o], name="ternary_conv2d_dot"
    )


def ternary_dense_dot(planes: te.Tensor, weight: te.Tensor) -> te.Tensor:
    """Exact dense of a ternary activation (interleaved words ``[N, 2 * KW]``) with ±1 weights
    (packed ``[O, KW]``) or ternary ones (planes ``[2, O, KW]``): int32 ``[N, O]``,
    ``nonzeros - 2 * popcount((s XOR w) AND m)`` as for a conv."""
    n, kw = (int(v) for v in planes.shape)
    kw //= 2
    out = int(weight.shape[-2])
    if len(weight.shape) == 3:  # ternary weights too: as for a conv, -dot = 2 popc(x & m) - popc(m)
        rb = te.reduce_axis((0, kw), name="rk")

        def signed_mismatches(i, o):
            both = planes[i, 2 * rb + 1] & weight[1, o, rb]
            mismatch = (planes[i, 2 * rb] ^ weight[0, o, rb]) & both
            return te.sum(2 * tirx.popcount(mismatch).astype("int32") - tirx.popcount(both).astype("int32"), axis=rb)

        mismatches = te.compute((n, out), signed_mismatches, name="mismatches")
        return te.compute((n, out), lambda i, o: -mismatches[i, o], name="ternary_dense_dot")
    rn = te.reduce_axis((0, kw), name="rk")
    nonzeros = te.compute((n,), lambda i: te.sum(tirx.popcount(planes[i, 2 * rn + 1]).astype("int32"), axis=rn),
                          name="nonzeros")
    rk = te.reduce_axis((0, kw), name="rk")
    mismatches = te.compute(
        (n, out),
        lambda i, o: te.sum(
            tirx.popcount((planes[i, 2 * rk] ^ weight[o, rk]) & planes[i, 2 * rk + 1]).astype("int32"), axis=rk),
        name="mismatches",
    )
    return te.compute((n, out), lambda i, o: nonzeros[i] - 2 * mismatches[i, o], name="ternary_dense_dot")


RESIDUAL = "residual"
EPILOGUE_OPS = {
    "add": lambda v, c: v + c,
    "subtract": lambda v, c: v - c,
    "rsubtract": lambda v, c: c - v,
    "multiply": lambda v, c: v * c,
    "divide": lambda v, c: v / c,
    "rdivide": lambda v, c: c / v,
    "maximum": lambda v, c: tirx.max(v, c),  # clip, relu
    "minimum": lambda v, c: tirx.min(v, c),
    # ONNX PRelu, as ONNX Runtime computes it: x < 0 ? slope * x : x
    "prelu": lambda v, c: tirx.Select(v < tirx.const(0, "float32"), v * c, v),
    # a tensor of the output's shape added (a residual connection), not a per-channel constant
    RESIDUAL: lambda v, c: v + c,
}
ADDITIVE = ("add", "subtract", "rsubtract", RESIDUAL)
CONST_FIRST_OPS = ("rsubtract", "rdivide")
POSITION_AXES = "cyx"  # the axes of an NCHW output a positional constant may vary along


def positional_step(op: str, axes: str) -> str:
    """The epilogue step ``op`` with a positional constant: one that varies along ``axes`` (a
    subset of ``POSITION_AXES``: channels, rows, columns), shaped ``[C|1, H|1, W|1]``, such as
    XNOR++'s per-row and per-column output scales. Named ``op@axes``."""
    return f"{op}@{axes}"


def step_op(step: str) -> str:
    """The ``EPILOGUE_OPS`` name of an epilogue step (``multiply`` for ``multiply@yx``)."""
    return step.partition("@")[0]


def step_axes(step: str) -> str | None:
    """The axes a positional step's constant varies along (``positional_step``), None for a
    per-channel step or the residual."""
    op, at, axes = step.partition("@")
    return axes if at else None


def positional_index(axes: str, o, y, x) -> tuple:
    """Where output ``(o, y, x)`` reads a positional constant ``[C|1, H|1, W|1]`` varying along ``axes``."""
    return tuple(i if axis in axes else 0 for axis, i in zip(POSITION_AXES, (o, y, x)))


def contraction_fence(value):
    """``value`` as it is, but LLVM may not fuse the multiply that produced it into the add that
    consumes it: TVM lets LLVM contract ``a * b + c`` into one FMA, which rounds once where the
    float graph (ONNX Runtime) rounds twice."""
    return tirx.call_llvm_pure_intrin(str(value.ty), "llvm.arithmetic.fence", value)


def apply_epilogue(value, consts, steps):
    """Per-channel float ops applied to ``value`` in order, each rounded to float32 on its own:
    ``steps`` are ``EPILOGUE_OPS`` names (or ``positional_step``s of them), ``consts`` the
    matching values (scalars or vectors). A product followed by an addition is fenced
    (``contraction_fence``)."""
    for position, (step, const) in enumerate(zip(steps, consts)):
        value = EPILOGUE_OPS[step_op(step)](value, const)
        # (LLVM may turn a PReLU's select of a product into a product of a select)
        if (step_op(step) in ("multiply", "prelu") and position + 1 < len(steps)
                and step_op(steps[position + 1]) in ADDITIVE):
            value = contraction_fence(value)
    return value


HALVES_BLOCK = 8  # a TTQ kernel's halves interleave at most this many channels per side (see halves_block)


def halves_block(channels: int) -> int:
    """The interleave block ``B`` of a TTQ kernel's ``2 * channels`` halves: the largest power of
    two <= ``HALVES_BLOCK`` dividing ``channels``. The halves run in blocks of ``B`` channels
    ``b * P`` then the same ``B`` channels' ``a * N``, so a tile of whole blocks of output
    channels reads one contiguous range of the halves (``ttq_conv2d_float``). 8: an AVX-512
    vector of halves is one block's P and N, an AVX2 vector one side of a block (on Zen 4, 2
    threads, the 16-channel ResNet-20 block, pack to residual add: 39 us with B = 16, whose
    tile is 4 x 32 halves, 36 us with 8, 37 us with 4, whose output vectors are a quarter wide)."""
    block = HALVES_BLOCK
    while channels % block:
        block //= 2
    return block


def positive_half(o, channels: int):
    """The halves channel of output channel ``o``'s ``b * P`` (an int or an index expression);
    its ``a * N`` is ``halves_block(channels)`` further."""
    block = halves_block(channels)
    if block == channels:  # one block: no index arithmetic for the simplifier to see through
        return o
    return o // block * (2 * block) + o % block


def halves_difference(both: te.Tensor, *consts: te.Tensor, steps: tuple[str, ...] = ()) -> te.Tensor:
    """TTQ's ``b * P - a * N`` from a kernel's float output over ``2 * C`` channels (NCHW or
    ``[N, 2C]``; interleaved as ``positive_half`` says), one float32 subtraction, then the
    per-channel ``steps`` with ``consts`` (``apply_epilogue``; ``residual``: a tensor of the
    output's shape)."""
    channels = int(both.shape[1]) // 2
    block = halves_block(channels)

    def value(*index):
        o, rest = index[1], index[2:]
        p = positive_half(o, channels)
        v = both[(index[0], p, *rest)] - both[(index[0], p + block, *rest)]
        return apply_epilogue(v, [c[index] if step == RESIDUAL else c[o] for step, c in zip(steps, consts)], steps)

    return te.compute((both.shape[0], channels, *both.shape[2:]), value, name="halves_difference")


def ttq_conv2d_float(dot: te.Tensor, plus: te.Tensor, minus: te.Tensor, *consts: te.Tensor,
                     steps: tuple[str, ...] = ()) -> te.Tensor:
    """A TTQ conv finished in its own kernel: ``dot`` the integer results ``[N, OH, OW, 2C]`` of
    the halves (interleaved, ``positive_half``), ``plus`` b and ``minus`` a ``[C]``. The same
    float32 operations as the halves kernel and its difference kernel in turn
    (``halves_difference``): ``float(P) * b`` and ``float(N) * a`` each rounded (fenced, so no
    FMA contracts them into the subtraction), their difference, then the ``steps``
    (``dot_to_float_nchw``): bit-identical to the two kernels, without the ``2 * C`` float
    channels between them."""
    n, oh, ow, halves = (int(v) for v in dot.shape)
    channels = halves // 2
    block = halves_block(channels)

    def value(i, y, x, o):
        p = positive_half(o, channels)
        positive = contraction_fence(dot[i, y, x, p].astype("float32") * plus[o])
        negative = contraction_fence(dot[i, y, x, p + block].astype("float32") * minus[o])
        return positive - negative

    difference = te.compute((n, oh, ow, channels), value, name="ttq_difference")
    return dot_to_float_nchw(difference, *consts, steps=steps)


def activation_value(v, levels: int = 1, activation_scale: float | None = None, lanes: int = 1):
    """A k-bit conv's float value of its integer ``v`` (converted to float32, ``lanes`` wide):
    ``v * s`` for a ``Quant``'s scale s (the float graph's ``(q - z) * s``, summed), else
    DoReFa's ``v / L`` (``levels`` L; 1: a binary kernel, ``v`` itself). One rounding, like each
    term of the float graph."""
    if activation_scale is None and levels == 1:
        return v
    const = tirx.const(levels if activation_scale is None else activation_scale, "float32")
    const = const if lanes == 1 else tirx.Broadcast(const, lanes)
    return v / const if activation_scale is None else v * const


def dot_to_float_nchw(
    dot: te.Tensor, *consts: te.Tensor, steps: tuple[str, ...] | None = None, levels: int = 1,
    activation_scale: float | None = None, dtype: str = "float32",
) -> te.Tensor:
    """The integer result as the float model sees it, NCHW (or ``[N, O]``): divided by the
    activation ``levels`` of a multi-bit input (or multiplied by a ``Quant``'s ``activation_scale``:
    ``activation_value``), then the per-channel ``steps`` with ``consts``
    (``apply_epilogue``; default: one multiply, the per-channel weight scale of ±scale
    weights); one step ``residual`` adds a tensor of the output's shape (a residual connection;
    per-channel steps may follow it, e.g. ReActNet's RPReLU); a ``positional_step`` (NCHW only)
    reads its constant ``[C|1, H|1, W|1]`` at the output's position (``positional_index``).
    Exact below 2^24 with no steps; with steps, float32 like the float graph's ops."""
    steps = tuple(steps) if steps is not None else ("multiply",) * len(consts)
    if len(steps) != len(consts):
        raise ValueError(f"epilogue {steps} needs {len(steps)} per-channel constants, got {len(consts)}")
    if steps.count(RESIDUAL) > 1:
        raise ValueError(f"epilogue {steps}: at most one residual")

    if len(dot.shape) != 4 and any(step_axes(step) for step in steps):
        raise ValueError(f"epilogue {steps}: positional steps need an NCHW output")

    def operand(step, c, index):
        if step == RESIDUAL:
            return c[index]
        axes = step_axes(step)
        return c[index[1]] if axes is None else c[positional_index(axes, *index[1:])]

    def value(d, index):
        v = activation_value(d.astype(dtype), levels, activation_scale)
        return apply_epilogue(v, [operand(step, c, index) for step, c in zip(steps, consts)], steps)

    if len(dot.shape) == 4:
        n, oh, ow, oc = dot.shape
        return te.compute((n, oc, oh, ow), lambda i, o, y, x: value(dot[i, y, x, o], (i, o, y, x)), name="dot_float")
    return te.compute(dot.shape, lambda i, o: value(dot[i, o], (i, o)), name="dot_float")


def threshold_pack(dot: te.Tensor, low: te.Tensor, high: te.Tensor) -> te.Tensor:
    """Binarize an integer result per channel and pack it for the next binary layer.

    Output channel ``o`` is +1 exactly when ``low[o] <= dot <= high[o]``: the folded form of any
    monotone per-channel float chain (bias, batch norm, scale) followed by ``>= 0``; a negative
    scale gives an open ``low`` (``relay_passes.analysis.rounding.OPEN_LOW``). Channels are the
    last axis of ``dot``.

    Two stages: one decision (bool) per channel, padded to whole words, then the packing of
    those decisions (:func:`pack_decisions`). CPU schedules turn the second into one vector
    compare-to-mask per word (``schedules.cpu``).
    """
    channels = int(dot.shape[-1])
    words = num_words(channels)

    def decide(*index):
        *lead, c = index
        if channels == words * WORD_BITS:  # no channel padding: no clamp, simpler regions
            value = dot[tuple(lead) + (c,)]
            return tirx.all(value >= low[c], value <= high[c])
        safe = tirx.min(c, channels - 1)
        value = dot[tuple(lead) + (safe,)]
        return tirx.all(c < channels, value >= low[safe], value <= high[safe])

    decisions = te.compute(tuple(dot.shape[:-1]) + (words * WORD_BITS,), decide, name="threshold_bits")
    return pack_decisions(decisions)


def pack_decisions(decisions: te.Tensor, name: str = "threshold_pack") -> te.Tensor:
    """Pack bool decisions along the last axis (a multiple of 32) into words: bit ``b`` of word
    ``w`` is decision ``32 w + b``. Bits never overlap, so their sum is their OR."""
    words = int(decisions.shape[-1]) // WORD_BITS
    b = te.reduce_axis((0, WORD_BITS), name="bit")

    def word(*index):
        *lead, cw = index
        bit = decisions[tuple(lead) + (cw * WORD_BITS + b,)]
        return te.sum(bit.astype(WORD_DTYPE) << b.astype(WORD_DTYPE), axis=b)

    return te.compute(tuple(decisions.shape[:-1]) + (words,), word, name=name)


def max_pool_or(
    data: te.Tensor, pool: tuple[int, int], strides: tuple[int, int], padding: tuple[int, int, int, int], out_hw,
    flip: te.Tensor | None = None,
) -> te.Tensor:
    """Max pooling of packed ±1 values: the max of ±1 values is +1 iff any is, a bitwise OR.

    Padded positions are 0 words, neutral for OR (a float max pool pads with -inf). ``flip``
    (one word per channel word) is XORed into the result: channels whose bits arrive
    complemented are pooled with an AND, ``and(b) = not(or(not b))``.
    """
    n, h, w, cw = (int(v) for v in data.shape)
    (kh, kw), (sh, sw), (pt, pl, _, _) = pool, strides, padding
    bitwise_or = te.comm_reducer(lambda a, b: a | b, lambda dtype: tirx.const(0, dtype), name="bitwise_or")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")

    def word(i, y, x, c):
        yy, xx = y * sh + ry - pt, x * sw + rx - pl
        inside = tirx.all(yy >= 0, yy < h, xx >= 0, xx < w)
        safe_y, safe_x = tirx.max(tirx.min(yy, h - 1), 0), tirx.max(tirx.min(xx, w - 1), 0)
        value = tirx.if_then_else(inside, data[i, safe_y, safe_x, c], tirx.const(0, WORD_DTYPE))
        return bitwise_or(value, axis=[ry, rx])

    pooled = te.compute((n, out_hw[0], out_hw[1], cw), word, name="max_pool_or")
    if flip is None:
        return pooled
    return te.compute(pooled.shape, lambda i, y, x, c: pooled[i, y, x, c] ^ flip[c], name="max_pool_flip")


@dataclass(frozen=True)
class LevelCode:
    """How ``bits`` packed bit planes encode a k-bit activation: plane ``j`` holds bit ``j`` of
    an unsigned integer ``u`` in ``0 .. 2^bits - 1``.

    DoReFa (``scale`` None): ``u = q = round_half_even(clip(x, 0, 1) * L)``, value ``q / L``,
    ``L = 2^bits - 1``. QONNX ``Quant`` (``scale`` s, ``zero_point`` z, integer range ``low ..
    high``): ``q = round(clip(x / s + z, low, high))``, value ``(q - z) * s``, stored as
    ``u = q - low``. Either way the value is ``(u + offset) * unit`` with ``offset = low - z``,
    an exact integer, and a conv's integer sum ``sum (u + offset) * w`` is exact; the float
    value 0 (a conv's zero padding) is ``u = pad_level = z - low``.
    """

    bits: int
    scale: float | None = None  # None: DoReFa
    zero_point: int = 0
    low: int = 0
    high: int = 0  # DoReFa: L
    rounding: str = "round"  # half to even (ONNX Round); QONNX also defines "ceil" and "floor"

    @staticmethod
    def dorefa(bits: int) -> "LevelCode":
        return LevelCode(bits, high=(1 << bits) - 1)

    @property
    def offset(self) -> int:
        return self.low - self.zero_point

    @property
    def pad_level(self) -> int:
        return -self.offset

    @property
    def bound(self) -> int:
        """The largest ``|q - z|``: a conv's integer result lies in ``-bound * taps .. bound * taps``."""
        return max(abs(self.low - self.zero_point), abs(self.high - self.zero_point))

    def attrs(self) -> dict:
        """Kernel attributes (``bits`` alone for DoReFa, as kernels made before Quant had)."""
        if self.scale is None:
            return {"bits": self.bits}
        return {"bits": self.bits, "scale": self.scale, "zero_point": self.zero_point, "low": self.low,
                "high": self.high, "rounding": self.rounding}

    @staticmethod
    def of(attrs: dict) -> "LevelCode":
        """The code of a ``pack_levels`` kernel from its ``bnn.*`` attributes."""
        bits = int(attrs["bnn.bits"])
        if "bnn.scale" not in attrs:
            return LevelCode.dorefa(bits)
        return LevelCode(bits, float(attrs["bnn.scale"]), int(attrs["bnn.zero_point"]), int(attrs["bnn.low"]),
                         int(attrs["bnn.high"]), str(attrs["bnn.rounding"]))


ROUNDINGS = {"round": tirx.nearbyint, "ceil": tirx.ceil, "floor": tirx.floor}


def quantized_level(value, code: LevelCode):
    """``u`` (int32) of one float32 activation, with the float graph's ops in its order: DoReFa's
    ``Round(Clip(x, 0, 1) * L)``, or ``Quant``'s ``Div``, ``Add``, ``Max``, ``Min``, ``Round``."""
    f = lambda v: tirx.const(v, value.dtype)  # noqa: E731
    if code.scale is None:
        clipped = tirx.min(tirx.max(value, f(0.0)), f(1.0))
        return tirx.nearbyint(clipped * f(float(code.high))).astype("int32")
    shifted = value / f(code.scale) + f(float(code.zero_point))
    clipped = tirx.min(tirx.max(shifted, f(float(code.low))), f(float(code.high)))
    return ROUNDINGS[code.rounding](clipped).astype("int32") - code.low


def pack_levels(x: te.Tensor, code: LevelCode | int) -> te.Tensor:
    """A k-bit activation as ``bits`` packed bit planes ``[bits, N, H, W, CW]`` (``code``: a
    ``LevelCode``, or DoReFa's bit count); plane ``j`` holds bit ``j`` of ``u``."""
    code = code if isinstance(code, LevelCode) else LevelCode.dorefa(code)
    n, channels, h, w = (int(v) for v in x.shape)
    words = num_words(channels)
    q = te.compute((n, channels, h, w), lambda i, c, y, z: quantized_level(x[i, c, y, z], code), name="levels")
    b = te.reduce_axis((0, WORD_BITS), name="bit")

    def body(j, i, y, z, cw):
        c = cw * WORD_BITS + b
        safe = tirx.min(c, channels - 1)
        on = tirx.all(c < channels, (q[i, safe, y, z] >> j) & 1 == 1)
        return te.sum(_bit(on, b), axis=b)

    # named like a ternary pack: the CPU schedule of pack_sign, with one more (plane) loop
    return te.compute((code.bits, n, h, w, words), body, name="pack_sign")


def unpack_levels(planes: te.Tensor, channels: int, code: LevelCode | None = None, dtype: str = "float32") -> te.Tensor:
    """Bit planes back to the float values in NCHW: DoReFa's ``q / L``, ``Quant``'s ``(q - z) * s``
    (``q - z = u + offset`` exactly, so one rounding, as the float graph's ``Mul``)."""
    bits, n, h, w, _ = (int(v) for v in planes.shape)
    code = code or LevelCode.dorefa(bits)

    def value(i, c, y, z):
        u = tirx.const(0, "int32")
        for j in range(bits):
            word = planes[j, i, y, z, c // WORD_BITS]
            u = u + (((word >> (c % WORD_BITS).astype(WORD_DTYPE)) & tirx.const(1, WORD_DTYPE)).astype("int32") << j)
        if code.scale is None:
            return u.astype(dtype) / tirx.const(code.high, dtype)
        return (u + code.offset).astype(dtype) * tirx.const(code.scale, dtype)

    return te.compute((n, channels, h, w), value, name="unpack_levels")


def multibit_conv2d_dot(
    planes: te.Tensor, weight: te.Tensor, offsets: te.Tensor, strides: tuple[int, int],
    padding: tuple[int, int, int, int], pad_level: int = 0, channels: int = 0,
) -> te.Tensor:
    """Exact ``sum q * w`` (q in 0..L, w = ±1) over bit planes: int32 ``[N, OH, OW, OC]``.

    With weight bits wb (w = 2 wb - 1) and a plane's bits b, ``b * w = wb - (b XOR wb)``: per
    plane ``sum b * w = P - M_j``, with P the count of +1 weights and M_j the plane's XOR popcount
    (the binary conv's mismatches), so ``sum q * w = L * P - sum_j 2^j M_j``; ``offsets`` holds
    ``L * P`` per output channel (``fuse_binary_conv2d.multibit_offsets``). One popcount per word and plane, like a
    binary conv. Zero padding is q = 0, a 0 word, exactly the float model's 0 (``wb - wb``):
    no correction is needed. ``planes``: ``[bits, N, H, W, CW]``; ``weight``: ``[OC, KH, KW, CW]``.

    A ``Quant`` code (``LevelCode``) stores ``u = q - low``: the sum of ``(u + offset) * w`` is
    this one plus ``offset * sum w`` (in ``offsets``, over every tap). Padded taps then hold
    ``u = pad_level`` (its bits in each plane's words, over the ``channels`` real channels), whose
    value ``pad_level + offset = 0`` is the float model's zero padding, at every position: no
    per-position correction.
    """
    bits, n, h, w, cw = (int(v) for v in planes.shape)
    oc, kh, kw, _ = (int(v) for v in weight.shape)
    sh, sw = strides
    pt, pl, _, _ = padding
    oh, ow = conv_output_hw((h, w), (kh, kw), strides, padding)
    padded = padded_words(planes, padding, level_fill(pad_level, channels, cw) if pad_level else None)
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    rc = te.reduce_axis((0, cw), name="rc")

    def weighted_mismatches(i, y, x, o):
        # the planes unrolled in the term: constant shifts, and each weight word loaded once
        # for all planes
        word = weight[o, ry, rx, rc]
        terms = [
            tirx.popcount(padded[j, i, y * sh + ry, x * sw + rx, rc] ^ word).astype("int32") << j
            for j in range(bits)
        ]
        return te.sum(functools.reduce(operator.add, terms), axis=[ry, rx, rc])

    mismatches = te.compute((n, oh, ow, oc), weighted_mismatches, name="mismatches")
    return te.compute(
        (n, oh, ow, oc), lambda i, y, x, o: offsets[o] - mismatches[i, y, x, o], name="multibit_conv2d_dot"
    )


def level_fill(level: int, channels: int, words: int):
    """The padded word of plane ``j`` for the level ``level``: the +1 pad word (real channel bits
    set) where bit ``j`` of ``level`` is set, else 0."""
    ones = _pad_word(channels, words)
    return lambda j, *index: tirx.Select(
        (tirx.const(level, "int32") >> j) & 1 == 1, ones(*index), tirx.const(0, WORD_DTYPE)
    )


def table_lookup(dot: te.Tensor, table: te.Tensor, offset: int) -> te.Tensor:
    """``table[channel, dot + offset]`` in NCHW (or ``[N, O]``): a per-channel float function of
    the integer result, tabulated at compile time (no float arithmetic left to round or fuse)."""
    if len(dot.shape) == 4:
        n, oh, ow, oc = dot.shape
        return te.compute(
            (n, oc, oh, ow), lambda i, o, y, x: table[o, dot[i, y, x, o] + offset], name="table_lookup"
        )
    return te.compute(dot.shape, lambda i, o: table[o, dot[i, o] + offset], name="table_lookup")


# --------------------------------------------------------------------------------------------
# Attention: matmuls of two binarized activations, per head


def head_view(x: te.Tensor, heads_axis: int):
    """``(batch, heads, tokens, depth, read(i, h, t, k))`` of attention heads ``[B, H, T, d]``
    (``heads_axis`` 1), or of the ``[B, T, H, d]`` view before the head transpose (``heads_axis``
    2), read in place."""
    if heads_axis == 1:
        batch, heads, tokens, depth = (int(v) for v in x.shape)
        return batch, heads, tokens, depth, lambda i, h, t, k: x[i, h, t, k]
    batch, tokens, heads, depth = (int(v) for v in x.shape)
    return batch, heads, tokens, depth, lambda i, h, t, k: x[i, t, h, k]


def pack_heads(x: te.Tensor, heads_axis: int = 1, ternary: bool = False, tokens_last: bool = False) -> te.Tensor:
    """A float per-head tensor binarized and packed along its head dimension ``d``.

    ``x``: float ``[B, H, T, d]`` (``heads_axis`` 1), or ``[B, T, H, d]`` (``heads_axis`` 2: the
    head split before the transpose that attention applies, read in place so the transpose never
    runs). Result ``[B, H, T, W]`` (``tokens_last``: ``[B, H, W, T]``, a vector of tokens one
    load), bit ``b`` of word ``w`` holding ``d = 32 w + b`` and padding bits 0. Bipolar: bit set
    where ``x >= 0``. ``ternary`` (``Sign`` that may see 0): the words interleaved as in
    ``pack_ternary``, ``2 w`` the signs (``x > 0``), ``2 w + 1`` the nonzeros (``x != 0``).
    """
    batch, heads, tokens, depth, read = head_view(x, heads_axis)
    words = num_words(depth)
    b = te.reduce_axis((0, WORD_BITS), name="bit")
    zero = tirx.const(0, x.dtype)

    def word(i, h, t, w):
        k = (w // 2 if ternary else w) * WORD_BITS + b
        value = read(i, h, t, tirx.min(k, depth - 1))
        if ternary:  # even words x > 0, odd words x != 0 (as And/Or, see pack_ternary)
            on = tirx.any(value > zero, tirx.all(w % 2 == 1, value < zero))
        else:
            on = value >= zero
        return te.sum(_bit(tirx.all(k < depth, on), b), axis=b)

    count = 2 * words if ternary else words
    if tokens_last:
        return te.compute((batch, heads, count, tokens), lambda i, h, w, t: word(i, h, t, w), name="pack_heads")
    return te.compute((batch, heads, tokens, count), word, name="pack_heads")


def attention_scores_dot(q: te.Tensor, k: te.Tensor, taps: int, ternary: bool = False) -> te.Tensor:
    """``Q K^T`` of two packed activations, exact: int32 ``[B, H, T, T2]``.

    ``q``: ``pack_heads`` words ``[B, H, T, W]``; ``k``: ``[B, H, W, T2]`` (tokens last). Bipolar:
    ``S = taps - 2 * popcount(q XOR k)`` over ``taps = d`` (padding bits 0 in both cancel).
    ``ternary`` (both as sign and nonzero words): over the taps where both are nonzero (``m =
    m_q AND m_k``) a product is +1 where the signs agree and -1 where not, so ``S = popcount(m)
    - 2 * popcount((s_q XOR s_k) AND m)``; summed here as ``-S = sum 2 popc(x AND m) - popc(m)``.
    """
    batch, heads, tokens, words = (int(v) for v in q.shape)
    keys = int(k.shape[-1])
    rw = te.reduce_axis((0, words // 2 if ternary else words), name="rw")
    if not ternary:
        mismatches = te.compute(
            (batch, heads, tokens, keys),
            lambda i, h, t, j: te.sum(tirx.popcount(q[i, h, t, rw] ^ k[i, h, rw, j]).astype("int32"), axis=rw),
            name="mismatches",
        )
        return te.compute(mismatches.shape, lambda *index: taps - 2 * mismatches[index], name="attention_dot")

    def signed_mismatches(i, h, t, j):
        both = q[i, h, t, 2 * rw + 1] & k[i, h, 2 * rw + 1, j]
        mismatch = (q[i, h, t, 2 * rw] ^ k[i, h, 2 * rw, j]) & both
        return te.sum(2 * tirx.popcount(mismatch).astype("int32") - tirx.popcount(both).astype("int32"), axis=rw)

    mismatches = te.compute((batch, heads, tokens, keys), signed_mismatches, name="mismatches")
    return te.compute(mismatches.shape, lambda *index: -mismatches[index], name="attention_dot")


def scores_to_float(dot: te.Tensor, dtype: str = "float32") -> te.Tensor:
    """The integer scores as the float graph's matmul gives them: exact, ``|S| <= d < 2^24``."""
    return te.compute(dot.shape, lambda *index: dot[index].astype(dtype), name="scores_float")


# --------------------------------------------------------------------------------------------
# Bi-Attention: P = bool(S / sqrt(d) + mask) as bits along the keys, then P @ Sign(V)


def attention_bits(q: te.Tensor, k: te.Tensor, low: te.Tensor, high: te.Tensor, taps: int,
                   ternary: bool = False) -> te.Tensor:
    """Bi-Attention's ``P = bool(S / sqrt(d) + mask)`` packed along the keys: uint32 ``[B, H, T,
    ceil(T2 / 32)]``, bit ``b`` of word ``w`` the decision for key ``32 w + b`` (padding keys 0).

    ``S`` is ``attention_scores_dot(q, k, taps, ternary)``, the exact integer scores; the float
    chain after it (the division, the mask, the comparison) is folded into an integer interval
    per element of the constant mask (``low``, ``high``: int32, each axis 1 or the scores' own,
    ``relay_passes.analysis.attention.score_intervals``): the bit is ``low <= S <= high``."""
    dot = attention_scores_dot(q, k, taps, ternary)
    keys = int(dot.shape[-1])
    words = num_words(keys)

    def at(table, index):
        return table[tuple(0 if int(extent) == 1 else i for extent, i in zip(table.shape, index))]

    def decide(i, h, t, c):
        if keys == words * WORD_BITS:  # no padding keys: no clamp
            value = dot[i, h, t, c]
            return tirx.all(value >= at(low, (i, h, t, c)), value <= at(high, (i, h, t, c)))
        safe = tirx.min(c, keys - 1)
        value = dot[i, h, t, safe]
        return tirx.all(c < keys, value >= at(low, (i, h, t, safe)), value <= at(high, (i, h, t, safe)))

    decisions = te.compute(tuple(dot.shape[:-1]) + (words * WORD_BITS,), decide, name="threshold_bits")
    return pack_decisions(decisions)


def unpack_bits(bits: te.Tensor, keys: int, dtype: str = "float32") -> te.Tensor:
    """Inverse of :func:`attention_bits`: the decisions ``[..., words]`` back to 0/1 ``[..., keys]``
    (``P`` as the float graph computes it, for ``verify`` to compare)."""

    def value(*index):
        *lead, key = index
        word = bits[tuple(lead) + (key // WORD_BITS,)]
        return ((word >> (key % WORD_BITS).astype(WORD_DTYPE)) & tirx.const(1, WORD_DTYPE)).astype(dtype)

    return te.compute(tuple(bits.shape[:-1]) + (keys,), value, name="unpack_bits")


def pack_tokens(x: te.Tensor, heads_axis: int = 1, ternary: bool = False) -> te.Tensor:
    """``Sign(V)`` of float heads packed along the *tokens* (the axis ``P @ V`` contracts):
    uint32 ``[B, H, W, d]`` with ``W = ceil(T / 32)``, bit ``b`` of word ``w`` holding token
    ``32 w + b`` (padding tokens 0), ``d`` last so that a vector of outputs is one load.

    ``x``: ``[B, H, T, d]`` (``heads_axis`` 1) or the ``[B, T, H, d]`` view before the head
    transpose (``heads_axis`` 2, read in place). Bipolar: bit set where ``x >= 0``. ``ternary``:
    ``[B, H, 2 W, d]``, word ``2 w`` the signs (``x > 0``), ``2 w + 1`` the nonzeros (``x != 0``).
    """
    batch, heads, tokens, depth, read = head_view(x, heads_axis)
    words = num_words(tokens)
    b = te.reduce_axis((0, WORD_BITS), name="bit")
    zero = tirx.const(0, x.dtype)

    def word(i, h, w, j):
        t = (w // 2 if ternary else w) * WORD_BITS + b
        value = read(i, h, tirx.min(t, tokens - 1), j)
        if ternary:
            on = tirx.any(value > zero, tirx.all(w % 2 == 1, value < zero))
        else:
            on = value >= zero
        return te.sum(_bit(tirx.all(t < tokens, on), b), axis=b)

    count = 2 * words if ternary else words
    return te.compute((batch, heads, count, depth), word, name="pack_tokens")


def attention_context_dot(p: te.Tensor, v: te.Tensor, ternary: bool = False) -> te.Tensor:
    """``P @ Sign(V)`` of attention bits ``p`` (``attention_bits``: ``[B, H, T, W]``, 0/1 along
    the keys) and values ``v`` packed along the tokens (``pack_tokens``: ``[B, H, W, d]``),
    exact: int32 ``[B, H, T, d]``.

    Over the keys where ``p`` is 1 a term is +1 where the value bit is set and -1 where not:
    ``C = 2 * popcount(p AND v) - popcount(p)`` (padding bits are 0 in ``p``). ``ternary``
    (values as sign and nonzero words ``[B, H, 2 W, d]``; a sign bit is set only where the
    nonzero bit is): over the keys where both are set, ``C = 2 * popcount(p AND s) -
    popcount(p AND m)``. Named as ``attention_scores_dot``'s blocks, so its schedules apply."""
    batch, heads, tokens, words = (int(v_) for v_ in p.shape)
    depth = int(v.shape[-1])
    rw = te.reduce_axis((0, words), name="rw")

    def count(i, h, t, j):
        row = p[i, h, t, rw]
        if ternary:
            ones, weight = v[i, h, 2 * rw, j], tirx.popcount(row & v[i, h, 2 * rw + 1, j]).astype("int32")
        else:
            ones, weight = v[i, h, rw, j], tirx.popcount(row).astype("int32")
        return te.sum(2 * tirx.popcount(row & ones).astype("int32") - weight, axis=rw)

    counts = te.compute((batch, heads, tokens, depth), count, name="mismatches")
    return te.compute(counts.shape, lambda *index: counts[index], name="attention_dot")
