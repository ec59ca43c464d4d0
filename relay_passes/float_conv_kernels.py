"""Rewrite the plain float convs with constant weights into ``float_conv2d`` kernels (CPUs).

A binarized network keeps some convolutions in float (the stem, Bi-Real's downsampling
shortcuts). Every ``relax.nn.conv2d`` that ``schedules.float_conv.plain_float_conv`` accepts
(NCHW, OIHW, no groups, no dilation, float32) with a constant weight becomes a kernel tagged
``bnn.op = "float_conv2d"`` (``schedules.float_conv.float_conv2d``), which ``schedules.cpu``
schedules like the binary kernels. Those followed by a bias or batch norm were already made
kernels with that epilogue (``FoldFloatEpilogues``); this takes the rest.

A pass of the target-prepare phase (``pipeline.prepare_passes``), run where the kernels are
scheduled; no entry in the log ``inspect`` reads (the conv computes as the float graph does).
"""

from __future__ import annotations

import tvm

from bnn_tvm.schedules import float_conv

from .common import PassLog, RuleContext, op_name, rule_pass


def rewrite(ctx: RuleContext, call, across_rows: bool = False):
    if op_name(call) != "relax.nn.conv2d" or not float_conv.plain_float_conv(call):
        return None
    weight = float_conv.constant_weight(call, ctx.lookup_binding)
    if weight is None:
        return None
    strides = tuple(int(v) for v in call.attrs.strides)
    padding = tuple(int(v) for v in call.attrs.padding)
    ctx.fused(float_conv.FLOAT_CONV, "float conv")
    return ctx.builder_.call_te(
        lambda d, w: float_conv.float_conv2d(d, w, strides, padding, across_rows=across_rows), call.args[0], weight,
        primfunc_name_hint="float_conv2d",
        primfunc_attrs={"bnn.op": float_conv.FLOAT_CONV, "bnn.strides": list(strides), "bnn.padding": list(padding)},
    )


def float_conv_kernels(logs: list[PassLog] | None = None, across_rows: bool = False) -> tvm.transform.Pass:
    """``across_rows``: as ``float_conv.float_conv2d`` takes it (``float_conv.ACROSS_ROWS_FAMILIES``)."""
    return rule_pass(__name__, lambda ctx, call: rewrite(ctx, call, across_rows), logs)
