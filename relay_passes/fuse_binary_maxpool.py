"""Rewrite ``max_pool2d(unpack(p))`` into a bitwise-OR pool on the packed words.

The bits stay packed for the next binary layer; the float view is unpacked only if something
else reads it.
"""

from __future__ import annotations

from schedules import bitserial

from .common import RuleContext, op_name, shape_of


def fuse_binary_maxpool(ctx: RuleContext, call):
    if op_name(call) != "relax.nn.max_pool2d":
        return None
    data = call.args[0]
    kernel = ctx.bnn_kernel(data)
    if kernel is None or kernel[0] != "unpack_sign":
        return None
    attrs = call.attrs
    if any(int(d) != 1 for d in attrs.dilation) or str(attrs.layout) != "NCHW" or str(attrs.out_layout) != "NCHW":
        ctx.keep_float("dilated or non-NCHW max pool")
        return None
    pool = tuple(int(v) for v in attrs.pool_size)
    strides = tuple(int(v) for v in attrs.strides)
    padding = tuple(int(v) for v in attrs.padding)
    out_hw = shape_of(call)[2:]
    packed = ctx.kernel_inputs(data)[0]
    channels = shape_of(data)[1]
    pooled = ctx.builder_.emit(
        ctx.emit_kernel(
            lambda d: bitserial.max_pool_or(d, pool, strides, padding, out_hw), packed, op="max_pool_or"
        ),
        "pooled",
    )
    ctx.fused("max_pool_or", f"max pool {pool} stride {strides} on packed bits", pooled)
    return ctx.emit_kernel(
        lambda p: bitserial.unpack_sign(p, channels), pooled, op="unpack_sign", channels=channels
    )
