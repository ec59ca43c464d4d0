"""The float convolutions around the binary layers, on CPUs: the same register-tile schedule.

A binarized network keeps some convolutions in float (the stem, Bi-Real's downsampling
shortcuts). Left to TVM's default lowering they run as naive loops -- the 7x7 stem of a
ResNet-18 alone took 125 ms, forty times more than all its binary layers -- so the compiled
model would lose to the float engines on the float layers it shares with them.

``relay_passes.float_conv_kernels`` (the pipeline's target-prepare phase) turns every plain float ``relax.nn.conv2d`` with constant weights (NCHW,
OIHW, no groups, no dilation) into a kernel tagged ``bnn.op = "float_conv2d"``: a compute that
accumulates channels-last (``float_conv2d``) so that ``schedules.cpu`` gives it the binary
kernels' structure -- output channels across SIMD lanes, weights relaid out at compile time, a
register tile of FMA accumulators, transposed NCHW stores. The arithmetic is the float conv's;
only the summation order differs from other engines (float rounding, like any two float
engines).
"""

from __future__ import annotations

from tvm import te, tirx

from . import bitserial

FLOAT_CONV = "float_conv2d"
FLOAT_KERNELS = (FLOAT_CONV,)  # bnn.op kernels that compute in float (inspect: float path; tune: float tasks)


def float_conv2d(data: te.Tensor, weight: te.Tensor, strides, padding, *consts: te.Tensor, steps=()) -> te.Tensor:
    """NCHW float conv, accumulated in a channels-last stage ``conv_acc [N, OH, OW, OC]``, then
    the per-channel float ``steps`` with ``consts`` (a bias, a batch norm: ``bitserial.apply_epilogue``)."""
    n, c, h, w = (int(v) for v in data.shape)
    oc, _, kh, kw = (int(v) for v in weight.shape)
    (sh, sw), (pt, pl, pb, pr) = strides, padding
    oh, ow = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
    if any(padding):
        zero = tirx.const(0, data.dtype)
        padded = te.compute(
            (n, c, h + pt + pb, w + pl + pr),
            lambda i, k, y, x: tirx.if_then_else(
                tirx.all(y >= pt, y < h + pt, x >= pl, x < w + pl), data[i, k, y - pt, x - pl], zero
            ),
            name="pad_float",
        )
    else:
        padded = data
    rc = te.reduce_axis((0, c), name="rc")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    acc = te.compute(
        (n, oh, ow, oc),
        lambda i, y, x, o: te.sum(padded[i, rc, y * sh + ry, x * sw + rx] * weight[o, rc, ry, rx], axis=[rc, ry, rx]),
        name="conv_acc",
    )
    return te.compute(
        (n, oc, oh, ow), lambda i, o, y, x: bitserial.apply_epilogue(acc[i, y, x, o], [c[o] for c in consts], steps),
        name="conv_out",
    )


def plain_float_conv(call) -> bool:
    attrs = call.attrs
    return (
        int(attrs.groups) == 1
        and all(int(d) == 1 for d in attrs.dilation)
        and (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout)) == ("NCHW", "OIHW", "NCHW")
        and str(call.args[0].ty.dtype) == "float32"
        and str(attrs.out_dtype) in ("", "None", "float32", "void")
    )


def constant_weight(call, lookup_binding):
    """The weight (second argument) of a conv or matmul as a float32 constant (through one
    variable binding), or None."""
    import tvm
    from tvm import relax

    weight = call.args[1]
    if isinstance(weight, relax.Var):
        bound = lookup_binding(weight)
        weight = bound if isinstance(bound, tvm.ir.Constant) else weight
    if not isinstance(weight, tvm.ir.Constant) or str(weight.ty.dtype) != "float32":
        return None
    return weight
