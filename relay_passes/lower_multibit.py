"""Rewrite DoReFa's k-bit activation ``Round(Clip(x, 0, 1) * L) / L`` (``L = 2^k - 1``) into
``unpack_levels(pack_levels(x))``: k packed bit planes, which a following conv with binary
weights consumes directly (``fuse_binary_conv2d``)."""

from __future__ import annotations

from schedules import bitserial

from .common import RuleContext, clip_bounds, dtype_of, op_name, shape_of

MAX_BITS = 4


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


def lower_multibit(ctx: RuleContext, call):
    found = quantized_input(ctx, call)
    if found is None:
        return None
    x, bits = found
    channels = shape_of(x)[1]
    planes = ctx.builder_.emit(
        ctx.emit_kernel(lambda t: bitserial.pack_levels(t, bits), x, op="pack_levels", bits=bits), "planes"
    )
    ctx.fused("pack_levels", f"{bits}-bit activation on {shape_of(x)}", planes)
    return ctx.emit_kernel(
        lambda p: bitserial.unpack_levels(p, channels), planes, op="unpack_levels", channels=channels
    )
