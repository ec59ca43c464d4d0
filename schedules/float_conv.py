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
engines). On ARM a 1x1 conv whose rows are not whole groups of 4 positions (Bi-Real's 14- and
7-wide shortcuts) accumulates over its flattened positions instead (``pointwise_conv2d``), with
each output's sum unchanged: bit for bit the per-row form's values.
"""

from __future__ import annotations

from tvm import te, tirx

from . import bitserial

FLOAT_CONV = "float_conv2d"
FLOAT_KERNELS = (FLOAT_CONV,)  # bnn.op kernels that compute in float (inspect: float path; tune: float tasks)


def float_conv2d(data: te.Tensor, weight: te.Tensor, strides, padding, *consts: te.Tensor, steps=(),
                 across_rows: bool = False) -> te.Tensor:
    """NCHW float conv, accumulated in a channels-last stage ``conv_acc [N, OH, OW, OC]``, then
    the per-channel float ``steps`` with ``consts`` (a bias, a batch norm: ``bitserial.apply_epilogue``).
    ``across_rows``: a ``pointwise_across_rows`` conv as ``pointwise_conv2d`` (the target's
    family is in ``ACROSS_ROWS_FAMILIES``)."""
    n, c, h, w = (int(v) for v in data.shape)
    oc, _, kh, kw = (int(v) for v in weight.shape)
    (sh, sw), (pt, pl, pb, pr) = strides, padding
    oh, ow = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
    if across_rows and pointwise_across_rows(kh, kw, strides, padding, ow):
        return pointwise_conv2d(data, weight, consts, steps)
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


POSITION_GROUP = 4  # positions a tile takes per vector load (4 float32 lanes; ``tile`` prefers whole groups)
# The target families whose pointwise convs tile across rows (``pointwise_across_rows``), measured:
# the Cortex-A53 (qemu, executed instructions), Bi-Real's 14- and 7-wide shortcut convs 2.91 ->
# 2.28 M and 2.69 -> 2.37 M (4 x 16 tiles, a 4-position group one vector load: ``arm.row_loads``).
# x86 keeps per-row tiles: with 16 lanes a position is a broadcast folded into the FMA (nothing
# for a vector load to save), the 7-wide conv would take 4 x 32 tiles against 7 x 32 plus 6 %
# padding, and timings on a loaded Zen 4 (load 7-9 on 2 cores) did not separate the two forms.
ACROSS_ROWS_FAMILIES = ("arm",)


def pointwise_across_rows(kh: int, kw: int, strides, padding, ow: int) -> bool:
    """A 1x1, stride-1, unpadded conv whose rows are not whole groups of ``POSITION_GROUP``
    positions (Bi-Real's 14- and 7-wide downsampling shortcuts): computed as a GEMM over the
    flattened positions (``pointwise_conv2d``), whose tiles run across rows. Wider rows in whole
    groups (28, 56) keep per-row tiles: the flattened form's two copies would gain them nothing."""
    return (kh, kw) == (1, 1) and tuple(strides) == (1, 1) and not any(padding) and ow % POSITION_GROUP != 0


def pointwise_conv2d(data: te.Tensor, weight: te.Tensor, consts, steps) -> te.Tensor:
    """``float_conv2d`` of a 1x1 stride-1 unpadded conv as a GEMM ``[OC, C] x [C, P]`` over the
    ``H * W`` positions flattened and zero-padded to ``P``, a multiple of ``POSITION_GROUP``:
    ``flat_positions [N, C, P]`` (a copy, zeros past ``H * W``), ``conv_acc [N, P, OC]``,
    ``conv_tiles [N, OC, 1, P]`` (the epilogue, NCHW-like rows of positions, so that a tile's
    transposed stores are one rectangle), then ``conv_out`` copies the ``H * W`` real positions
    out. Each output is the same sum over ``rc`` in order and the same epilogue as
    ``float_conv2d``'s: bit for bit the same values; the padded positions are computed and dropped."""
    n, c, h, w = (int(v) for v in data.shape)
    oc = int(weight.shape[0])
    positions = h * w
    padded = -(-positions // POSITION_GROUP) * POSITION_GROUP
    zero = tirx.const(0, data.dtype)
    flat = te.compute(
        (n, c, padded),
        lambda i, k, p: tirx.if_then_else(p < positions, data[i, k, p // w, p % w], zero),
        name="flat_positions",
    )
    rc = te.reduce_axis((0, c), name="rc")
    ry = te.reduce_axis((0, 1), name="ry")
    rx = te.reduce_axis((0, 1), name="rx")
    acc = te.compute(
        (n, padded, oc),
        lambda i, p, o: te.sum(flat[i, rc, p + ry + rx] * weight[o, rc, ry, rx], axis=[rc, ry, rx]),
        name="conv_acc",
    )
    tiles = te.compute(
        (n, oc, 1, padded),
        lambda i, o, _, p: bitserial.apply_epilogue(acc[i, p, o], [k[o] for k in consts], steps),
        name="conv_tiles",
    )
    return te.compute((n, oc, h, w), lambda i, o, y, x: tiles[i, o, 0, y * w + x], name="conv_out")


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
