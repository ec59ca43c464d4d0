"""Rewrite a 1-D conv as a 2-D conv over a ``[N, C, 1, L]`` view of its input.

``conv1d(x, w)`` (NCW) becomes ``reshape(conv2d(reshape(x, [N, C, 1, L]), w[:, :, None]), [N, O, L'])``:
the same sum of the same products, so every later pass (binarizer lowering, the binary conv,
thresholds, epilogues) treats a 1-D binarized network like a 2-D one with a single row. The
reshapes in between are views: the passes look through reshapes that only add or drop unit
axes after the channel axis (``analysis.patterns.is_unit_axes_reshape``).
"""

from __future__ import annotations

import tvm
from tvm import relax

from .common import PassLog, RuleContext, op_name, rule_pass, shape_of

LIFTED = "conv1d_as_conv2d"  # the rewrite's name in the pass log: a view, not a kernel


def rewrite(ctx: RuleContext, call):
    if op_name(call) != "relax.nn.conv1d":
        return None
    attrs = call.attrs
    if (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout)) != ("NCW", "OIW", "NCW"):
        ctx.keep_float(f"1-D conv with layouts {attrs.data_layout}/{attrs.kernel_layout}")
        return None
    data, weight = call.args
    n, c, length = shape_of(data)
    o, i, k = shape_of(weight)
    # the new bindings keep the conv's name: later passes credit what they fuse to its ONNX node
    rows = ctx.builder_.emit(relax.op.reshape(data, [n, c, 1, length]), ctx.binding)
    values = ctx.constant(weight)  # a constant weight stays a constant for the binary conv
    kernel = relax.const(values.reshape(o, i, 1, k)) if values is not None else relax.op.reshape(weight, [o, i, 1, k])
    conv = ctx.builder_.emit(
        relax.op.nn.conv2d(
            rows, kernel, strides=[1, int(attrs.strides[0])],
            padding=[0, int(attrs.padding[0]), 0, int(attrs.padding[1])],
            dilation=[1, int(attrs.dilation[0])], groups=int(attrs.groups), out_dtype=attrs.out_dtype,
        ),
        ctx.binding,
    )
    ctx.alias((ctx.binding,), rows, conv)  # what later passes fuse into them is credited to the conv's node
    ctx.fused(LIFTED, "1-D conv computed as a 2-D conv over one row")
    return relax.op.reshape(conv, shape_of(call))


def lift_conv1d(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    return rule_pass(__name__, rewrite, logs)
