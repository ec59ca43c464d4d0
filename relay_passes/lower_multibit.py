"""Rewrite a k-bit activation into ``unpack_levels(pack_levels(x))``: k packed bit planes, which
a following conv with binary weights consumes directly (``fuse_binary_conv2d``).

Two forms: DoReFa's ``Round(Clip(x, 0, 1) * L) / L`` (``L = 2^k - 1``), and QONNX's ``Quant``
as ``bnn_tvm.frontend.qonnx_quant`` expands it, ``Mul(Sub(Round(Min(Max(Add(Div(x, s), z), low),
high)), z), s)`` with a per-tensor scale s and an integer zero point z (``LevelCode``).
"""

from __future__ import annotations

import math

import numpy as np
import tvm

from bnn_tvm.schedules import bitserial
from bnn_tvm.schedules.bitserial import LevelCode

from .common import PassLog, RuleContext, clip_bounds, dtype_of, op_name, rule_pass, shape_of

MAX_BITS = 4
MAX_QUANT_BITS = 8
# A conv on k planes of W words per position costs about PLANE_WORD_COST float channels per
# plane and word (``bench``, one thread, Zen 4: 3x3 convs to 64 channels on 3..64 input channels
# at 2, 4 and 8 bits; README's k-bit row): a Quant on fewer channels stays float, e.g. an 8-bit
# Quant on an RGB input, where a float conv is 3x faster than its 8 planes
PLANE_WORD_COST = 1.5
QUANT_ROUNDINGS = {"relax.round": "round", "relax.ceil": "ceil", "relax.floor": "floor"}


def clipped_to_unit(ctx: RuleContext, expr):
    """``x`` when ``expr`` is ``x`` clipped to [0, 1] (``clip``, or ``maximum``/``minimum``)."""
    node = ctx.producer(expr)
    if op_name(node) == "relax.clip":
        return node.args[0] if clip_bounds(node) == (0.0, 1.0) else None
    bounds = {}
    for _ in range(2):
        name = op_name(node)
        if name not in ("relax.maximum", "relax.minimum") or ctx.scalar(node.args[1]) is None:
            break
        bounds[name] = ctx.scalar(node.args[1])
        expr = node.args[0]
        node = ctx.producer(expr)
    return expr if bounds == {"relax.maximum": 0.0, "relax.minimum": 1.0} else None


def quantized_input(ctx: RuleContext, call):
    """``(x, bits)`` when ``call`` is ``round(clip(x, 0, 1) * L) / L`` with ``L = 2^bits - 1``."""
    if op_name(call) != "relax.divide":
        return None
    levels = ctx.scalar(call.args[1])
    rounded = ctx.producer(call.args[0])
    if levels is None or op_name(rounded) != "relax.round":
        return None
    scaled = ctx.producer(rounded.args[0])
    if op_name(scaled) != "relax.multiply" or ctx.scalar(scaled.args[1]) != levels:
        return None
    bits = int(levels + 1).bit_length() - 1
    if levels != (1 << bits) - 1 or not 1 <= bits <= MAX_BITS:
        return None
    x = clipped_to_unit(ctx, scaled.args[0])
    if x is None or len(shape_of(x)) != 4 or dtype_of(x) != "float32":
        return None
    return x, bits


def quant_chain(ctx: RuleContext, call):
    """``(x, scale, zero point, low, high, rounding, ops)`` when ``call`` is an expanded ``Quant``
    (``ops``: its other variables, for the log), else None. Scale and zero point as the
    constants found (any shape); the caller checks them."""
    expected = ("relax.multiply", "relax.subtract", None, "relax.minimum", "relax.maximum", "relax.add", "relax.divide")
    nodes, ops, expr = [], [], call
    for name in expected:
        node = ctx.producer(expr) if nodes else call
        if (name is None and op_name(node) not in QUANT_ROUNDINGS) or (name is not None and op_name(node) != name):
            return None
        nodes.append(node)
        if nodes[1:]:
            ops.append(expr)
        expr = node.args[0]
    mul, sub, rounded, upper, lower, add, div = nodes
    scale, zero = ctx.constant(mul.args[1]), ctx.constant(sub.args[1])
    if scale is None or zero is None or not np.array_equal(ctx.constant(div.args[1]), scale) \
            or not np.array_equal(ctx.constant(add.args[1]), zero):
        return None
    low, high = ctx.scalar(lower.args[1]), ctx.scalar(upper.args[1])
    if low is None or high is None:
        return None
    return expr, scale, zero, low, high, QUANT_ROUNDINGS[op_name(rounded)], ops


def quant_code(scale: np.ndarray, zero: np.ndarray, low: float, high: float, rounding: str,
               channels: int) -> LevelCode | str:
    """The planes' ``LevelCode`` of a ``Quant`` on ``channels`` channels, or why it stays float."""
    if scale.size != 1 or zero.size != 1:
        return "a Quant with a per-channel scale or zero point (a conv's sum needs one scale)"
    s, z = float(scale.reshape(())), float(zero.reshape(()))
    if not (math.isfinite(s) and s != 0):
        return f"a Quant with scale {s:g}"
    if z != int(z) or low != int(low) or high != int(high) or high <= low:
        return f"a Quant with a non-integer zero point or range ({z:g}, {low:g}..{high:g})"
    bits = (int(high) - int(low)).bit_length()
    if bits > MAX_QUANT_BITS:
        return f"a {bits}-bit Quant: more than {MAX_QUANT_BITS} bit planes"
    words = bitserial.num_words(channels)
    if PLANE_WORD_COST * bits * words > channels:
        return (f"a {bits}-bit Quant on {channels} channels: a float conv is faster than {bits} bit planes of "
                f"{words} word(s) (each costs about {PLANE_WORD_COST:g} float channels)")
    code = LevelCode(bits, s, int(z), int(low), int(high), rounding)
    if not 0 <= code.pad_level < 1 << bits:
        return f"a Quant whose zero point {z:g} lies outside its range {low:g}..{high:g} (zero padding has no level)"
    return code


def rewrite(ctx: RuleContext, call):
    found = quantized_input(ctx, call)
    if found is not None:
        x, bits = found
        return emit_planes(ctx, x, LevelCode.dorefa(bits), f"{bits}-bit activation")
    chain = quant_chain(ctx, call)
    if chain is None:
        return None
    x, scale, zero, low, high, rounding, ops = chain
    if len(shape_of(x)) != 4 or dtype_of(x) != "float32":
        ctx.keep_float("a Quant on a tensor that is not float32 NCHW (bit planes are for convs)", *ops)
        return None
    code = quant_code(scale, zero, low, high, rounding, shape_of(x)[1])
    if isinstance(code, str):
        ctx.keep_float(code, *ops)
        return None
    detail = (f"{code.bits}-bit Quant (scale {code.scale:g}, zero point {code.zero_point}, "
              f"{code.low}..{code.high}, {rounding})")
    return emit_planes(ctx, x, code, detail, *ops)


def emit_planes(ctx: RuleContext, x, code: LevelCode, detail: str, *ops):
    """``unpack_levels(pack_levels(x))`` for ``code``; ``ops``: the float ops they replace."""
    channels = shape_of(x)[1]
    planes = ctx.builder_.emit(
        ctx.emit_kernel(lambda t: bitserial.pack_levels(t, code), x, op="pack_levels", **code.attrs()), "planes"
    )
    ctx.fused("pack_levels", f"{detail} on {shape_of(x)}", planes, *ops)
    return ctx.emit_kernel(
        lambda p: bitserial.unpack_levels(p, channels, code), planes, op="unpack_levels", channels=channels
    )


def lower_multibit(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    return rule_pass(__name__, rewrite, logs)
