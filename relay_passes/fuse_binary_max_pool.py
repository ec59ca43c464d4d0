"""Rewrite ``max_pool2d(unpack(p))`` into a bitwise-OR pool on the packed words.

The bits stay packed for the next binary layer; the float view is unpacked only if something
else reads it.
"""

from __future__ import annotations

import tvm

from bnn_tvm.schedules import bitserial

from .analysis.patterns import or_pool_refusal
from .common import PassLog, RuleContext, op_name, rule_pass, shape_of
from .kernels import emit_or_pool


def rewrite(ctx: RuleContext, call):
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


def fuse_binary_max_pool(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    return rule_pass(__name__, rewrite, logs)
