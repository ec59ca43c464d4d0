"""Rewrite ``max_pool2d(unpack(p))`` into a bitwise-OR pool on the packed words.

The bits stay packed for the next binary layer; the float view is unpacked only if something
else reads it.
"""

from __future__ import annotations

from tvm import relax

from schedules import bitserial

from .common import RuleContext, op_name, shape_of


def or_pool_refusal(call) -> str | None:
    """Why the max pool ``call`` cannot run as an OR on packed bits, or None if it can."""
    attrs = call.attrs
    if any(int(d) != 1 for d in attrs.dilation) or str(attrs.layout) != "NCHW" or str(attrs.out_layout) != "NCHW":
        return "dilated or non-NCHW max pool"
    return None


def emit_or_pool(ctx: RuleContext, packed, call, flip=None):
    """The max pool ``call`` on the packed bits ``packed`` (bound to a variable); ``flip``: a
    constant word mask XORed into the result (``bitserial.max_pool_or``)."""
    attrs = call.attrs
    pool = tuple(int(v) for v in attrs.pool_size)
    strides = tuple(int(v) for v in attrs.strides)
    padding = tuple(int(v) for v in attrs.padding)
    out_hw = shape_of(call)[2:]
    extra = [] if flip is None else [relax.const(flip)]
    pooled = ctx.builder_.emit(
        ctx.emit_kernel(
            lambda d, *f: bitserial.max_pool_or(d, pool, strides, padding, out_hw, *f), packed, *extra, op="max_pool_or"
        ),
        "pooled",
    )
    ctx.fused("max_pool_or", f"max pool {pool} stride {strides} on packed bits", pooled)
    return pooled


def fuse_binary_maxpool(ctx: RuleContext, call):
    if op_name(call) != "relax.nn.max_pool2d":
        return None
    data = call.args[0]
    kernel = ctx.bnn_kernel(data)
    if kernel is None or kernel[0] != "unpack_sign":
        return None
    refusal = or_pool_refusal(call)
    if refusal is not None:
        ctx.keep_float(refusal)
        return None
    pooled = emit_or_pool(ctx, ctx.kernel_inputs(data)[0], call)
    channels = shape_of(data)[1]
    return ctx.emit_kernel(
        lambda p: bitserial.unpack_sign(p, channels), pooled, op="unpack_sign", channels=channels
    )
