"""Kernels that several passes emit: a binarizer's pack and unpack, OR pools on packed bits, the
integer result of a binary kernel rebuilt with other outputs (thresholds, tables, epilogues), and
a result viewed back in the shape of the tensor it replaces.
"""

from __future__ import annotations

from tvm import relax, te, tirx

from bnn_tvm.schedules import bitserial
from bnn_tvm.schedules.bitserial import WORD_DTYPE

from .analysis.weights import DIFFERENCE
from .common import RuleContext, shape_of


def viewed_as(ctx: RuleContext, value, source, expr):
    """``value``, computed in the shape of the chain's ``source``, in the shape of the chain's
    end ``expr``: they differ when the chain crossed a 1-D tensor's one-row view."""
    if shape_of(source) == shape_of(expr):
        return value
    return relax.op.reshape(ctx.builder_.emit(value, ctx.binding), shape_of(expr))


def kernel_params(attrs: dict) -> dict:
    """A kernel's ``bnn.*`` attributes but its op, without the prefix (``emit_kernel``'s keywords)."""
    return {k[len("bnn.") :]: v for k, v in attrs.items() if k.startswith("bnn.") and k != "bnn.op"}


def integer_dot(name: str, attrs: dict):
    """The TE compute of a binary kernel's integer result, from its tensor inputs."""
    taps = int(attrs["bnn.taps"])
    if name == "binary_dense":
        return lambda d, w, *offsets: bitserial.binary_dense_dot(d, w, taps, *offsets)
    if name == "ternary_dense":
        return bitserial.ternary_dense_dot
    strides = tuple(int(s) for s in attrs["bnn.strides"])
    padding = tuple(int(p) for p in attrs["bnn.padding"])
    if name == "multibit_conv2d":
        pad_level = int(attrs.get("bnn.pad_level", 0))  # a Quant's planes: the level of the value 0
        return lambda d, w, k: bitserial.multibit_conv2d_dot(
            d, w, k, strides, padding, pad_level, taps // (int(w.shape[1]) * int(w.shape[2]))
        )
    dilation = bitserial.kernel_dilation(attrs)
    if name == "ternary_conv2d":
        return lambda d, w: bitserial.ternary_conv2d_dot(d, w, strides, padding, dilation)
    pad_ones = bool(int(attrs["bnn.pad_ones"]))
    return lambda d, w, table, ycls, xcls: bitserial.binary_conv2d_dot(
        d, w, bitserial.BorderTable(table, ycls, xcls), taps, strides, padding, pad_ones, dilation
    )


def emit_difference(ctx: RuleContext, both, *consts, steps: tuple[str, ...] = ()):
    """The ``DIFFERENCE`` kernel on ``both`` (bound to a variable: a kernel's ``b * P`` and ``a *
    N`` over ``2 * C`` channels), TTQ's ``b * P - a * N`` (``bitserial.halves_difference``), with
    per-channel ``steps`` after it."""
    extra = {"epilogue": ",".join(steps)} if steps else {}
    return ctx.emit_kernel(lambda k, *cs: bitserial.halves_difference(k, *cs, steps=steps), both, *consts,
                           op=DIFFERENCE, **extra)


def epilogue_steps(attrs: dict) -> tuple[str, ...]:
    """The epilogue steps a kernel already applies (``bnn.epilogue``; none without it, as a
    ``DIFFERENCE`` kernel fresh from its fusion)."""
    text = str(attrs.get("bnn.epilogue", ""))
    return tuple(text.split(",")) if text else ()


def pack_and_unpack(ctx: RuleContext, x, flat_shape=None, *matched, strict: bool = False):
    """``unpack(pack(x))`` (reshaped to ``flat_shape`` if given), ``x`` float NCHW or [N, C];
    ``strict``: the bits say ``x > 0``, not ``x >= 0``.

    ``matched``: the other bindings (variables or names) of the binarizer pattern, for the log.
    """
    channels = shape_of(x)[1]
    if strict:
        pack = ctx.emit_kernel(lambda t: bitserial.pack_sign(t, strict=True), x, op="pack_sign", strict=True)
    else:
        pack = ctx.emit_kernel(bitserial.pack_sign, x, op="pack_sign")
    packed = ctx.builder_.emit(pack, ctx.logged_name("packed"))
    # the bit tensor goes last: inspect maps it back to the binarizer
    ctx.fused("pack_sign", f"binarizer{' (x > 0)' if strict else ''} on {shape_of(x)}", *matched, packed)
    unpacked = ctx.emit_kernel(
        lambda p: bitserial.unpack_sign(p, channels), packed, op="unpack_sign", channels=channels
    )
    if flat_shape is None:
        return unpacked
    return relax.op.reshape(ctx.builder_.emit(unpacked), flat_shape)


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


POINTS_OR = "points_max_or"


def points_max_or(data: te.Tensor, points: int, flip: te.Tensor | None = None) -> te.Tensor:
    """``[B*N, W]`` packed rows -> ``[B, W]``: the OR of each sample's ``points`` rows (the max of
    ±1 values is +1 iff any is), ``flip`` words XORed in (an AND for complemented channels)."""
    rows, words = (int(v) for v in data.shape)
    bitwise_or = te.comm_reducer(lambda a, b: a | b, lambda dtype: tirx.const(0, dtype), name="bitwise_or")
    n = te.reduce_axis((0, points), name="n")
    pooled = te.compute((rows // points, words), lambda b, w: bitwise_or(data[b * points + n, w], axis=[n]),
                        name="points_max_or")
    if flip is None:
        return pooled
    return te.compute(pooled.shape, lambda b, w: pooled[b, w] ^ flip[w].astype(WORD_DTYPE), name="points_max_flip")


def emit_points_or(ctx: RuleContext, packed, max_call, flip=None):
    """The kernel ORing the thresholded point rows ``packed`` of the max ``max_call``."""
    points = shape_of(max_call.args[0])[1]
    extra = [] if flip is None else [relax.const(flip)]
    pooled = ctx.builder_.emit(
        ctx.emit_kernel(lambda d, *f: points_max_or(d, points, *f), packed, *extra, op=POINTS_OR), "pooled"
    )
    ctx.fused(POINTS_OR, f"max over {points} points on packed bits", pooled)
    return pooled
