"""Move XNOR-Net's per-sample activation scale from a conv's input to its output.

XNOR-Net scales the binarized activations by their mean magnitude before the conv:
``conv(beta * Sign(x), W)`` with ``beta = mean(abs(x))`` over C, H, W (shape ``[N, 1, 1, 1]``, one
value per sample, known only at run time). The conv is linear and ``beta`` is the same at every
tap of every output, so ``conv(beta * s, W) = beta * conv(s, W)`` (zero padding included: a padded
tap is 0 either way): the conv on ``Sign(x)`` becomes a binary kernel and ``beta`` multiplies its
float output.

In float32 the two sides differ by rounding (the float graph rounds each ``beta * s * w`` and its
sum; the kernel's integer sum is exact, then scaled), as for any non-power-of-two weight scale,
and ``beta`` is not a constant, so a batch norm and binarizer after it stay float ops, decided on
values within rounding of the float graph's (``inspect`` says so).
"""

from __future__ import annotations

import tvm
from tvm import relax

from .common import PassLog, RuleContext, conv2d_like, op_name, rule_pass, shape_of

SIGN_LIKE = ("relax.sign", "relax.where")  # Sign, or a binarizer (its Where form)
SCALE_AFTER = "activation_scale_after_conv"  # inspect: the scaling Mul, now after the conv


def per_sample_scale(ctx: RuleContext, data):
    """``(binary, beta)`` when ``data`` is ``binary * beta`` (either order) with ``binary`` of a
    sign or binarizer and ``beta`` a run-time ``[N, 1, 1, 1]`` tensor, else None."""
    node = ctx.producer(data)
    if op_name(node) != "relax.multiply" or len(shape_of(node)) != 4:
        return None
    n = shape_of(node)[0]
    for binary, beta in ((node.args[0], node.args[1]), (node.args[1], node.args[0])):
        if ctx.constant(beta) is None and shape_of(beta) == (n, 1, 1, 1) and shape_of(binary) == shape_of(node) \
                and op_name(ctx.producer(binary)) in SIGN_LIKE:
            return binary, beta
    return None


def rewrite(ctx: RuleContext, call):
    if op_name(call) != "relax.nn.conv2d" or str(call.attrs.data_layout) != "NCHW":
        return None
    found = per_sample_scale(ctx, call.args[0])
    if found is None:
        return None
    binary, beta = found
    conv = ctx.builder_.emit(conv2d_like(call, binary), "unscaled_conv")
    ctx.alias((ctx.binding,), conv)
    ctx.fused(SCALE_AFTER, "XNOR-Net's per-sample activation scale moved after the conv (float, within rounding)",
              call.args[0])
    return relax.op.multiply(conv, beta)


def lift_activation_scale(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    return rule_pass(__name__, rewrite, logs)
