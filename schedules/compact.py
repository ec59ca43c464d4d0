"""Compact zero-padding corrections for the CPU conv kernels.

The passes give every zero-padded binary conv an exact correction tensor ``[OC, OH, OW]`` (what
the -1 bits at padded taps took away, see ``relay_passes.fuse_binary_conv2d``). It is nonzero
only at the border, and it only depends on *which* taps of an output position fall into the
padding: one class per distinct set of out-of-bounds kernel rows (``ycls``) and columns
(``xcls``). A 3x3 conv with padding 1 has 3 x 3 classes, so the correction becomes a table
``[NY, NX, OC]`` plus two small index vectors, instead of a tensor as large as the output.

For the reference layer (64 channels, 56x56) that is 2.3 KiB instead of 784 KiB of constants:
a smaller module, and a kernel that no longer streams a second output-sized tensor through
the caches on every call (it was the largest cost after the popcounts).

``compact_corrections(mod)`` rewrites the conv calls of a Relax module whose correction is a
constant, after checking that the table reproduces the tensor exactly; anything else is left
as it was. The kernels it emits are the same computes (``schedules.bitserial``) with the
correction given as ``table[ycls[y], xcls[x], o]``, tagged ``bnn.compact_correction``.
"""

from __future__ import annotations

import numpy as np

CONV_OPS = ("binary_conv2d", "binary_conv2d_threshold", "binary_conv2d_table", "binary_conv2d_epilogue")


def border_classes(size_in: int, size_out: int, kernel: int, stride: int, pad_before: int, dilation: int = 1):
    """``(class of each output index, one representative index per class)``: outputs whose
    window has the same taps outside ``[0, size_in)`` share a class."""
    keys, classes, representatives = {}, [], []
    for out in range(size_out):
        start = out * stride - pad_before
        key = tuple(not 0 <= start + k * dilation < size_in for k in range(kernel))
        if key not in keys:
            keys[key] = len(keys)
            representatives.append(out)
        classes.append(keys[key])
    return np.array(classes, np.int32), representatives


def compact(correction: np.ndarray, in_hw, kernel_hw, strides, padding, dilation=(1, 1)):
    """``(table [NY, NX, OC], ycls [OH], xcls [OW])`` reproducing ``correction`` exactly, or None."""
    _, oh, ow = correction.shape
    ycls, rows = border_classes(in_hw[0], oh, kernel_hw[0], strides[0], padding[0], dilation[0])
    xcls, cols = border_classes(in_hw[1], ow, kernel_hw[1], strides[1], padding[1], dilation[1])
    table = np.ascontiguousarray(correction[:, rows][:, :, cols].transpose(1, 2, 0)).astype(np.int32)
    if not np.array_equal(table[ycls][:, xcls].transpose(2, 0, 1), correction):
        return None
    return table, ycls, xcls


def kernel_builder(func, op: str):
    """A function ``(data, weight, table, ycls, xcls, *rest) -> output tensor`` rebuilding the
    kernel ``func`` with a compact correction, or None when its form is not one this knows."""
    from schedules import bitserial

    attrs = func.attrs
    taps = int(attrs["bnn.taps"])
    dilation = bitserial.kernel_dilation(attrs)
    strides = tuple(int(v) for v in attrs["bnn.strides"])
    padding = tuple(int(v) for v in attrs["bnn.padding"])
    pad_ones = bool(int(attrs["bnn.pad_ones"])) if "bnn.pad_ones" in attrs else False
    rest = len(func.params) - 4  # beyond data, weight, correction and the output

    def conv(data, weight, table, ycls, xcls):
        return bitserial.binary_conv2d_dot(
            data, weight, lambda o, y, x: table[ycls[y], xcls[x], o], taps, strides, padding, pad_ones, dilation
        )

    if op == "binary_conv2d" and rest in (0, 1):  # optional per-channel weight scale
        return lambda d, w, t, yc, xc, *scale: bitserial.dot_to_float_nchw(conv(d, w, t, yc, xc), *scale)
    if op == "binary_conv2d_epilogue":
        steps = tuple(str(attrs["bnn.epilogue"]).split(","))
        if rest == len(steps):
            return lambda d, w, t, yc, xc, *consts: bitserial.dot_to_float_nchw(conv(d, w, t, yc, xc), *consts, steps=steps)
    if op == "binary_conv2d_threshold" and rest == 2:
        return lambda d, w, t, yc, xc, low, high: bitserial.threshold_pack(conv(d, w, t, yc, xc), low, high)
    if op == "binary_conv2d_table" and rest == 1:
        # table [OC, 2 * offset + 1]: one entry per value the integer result can take
        def build(d, w, t, yc, xc, values):
            offset = (int(values.shape[1]) - 1) // 2
            return bitserial.table_lookup(conv(d, w, t, yc, xc), values, offset)

        return build
    return None


def compact_corrections(mod):
    """Rewrite the padded binary convs of ``mod`` to compact corrections (see the module doc)."""
    import tvm
    from tvm import relax

    from . import bitserial, rewrite_calls

    call_tir = tvm.ir.Op.get("relax.call_tir")

    def rewrite(mutator, call):
        if call.op != call_tir:
            return None
        func = mutator.builder_.get()[call.args[0]]
        if not isinstance(func, tvm.tirx.PrimFunc) or func.attrs is None:
            return None
        op = str(func.attrs["bnn.op"]) if "bnn.op" in func.attrs else None
        args = list(call.args[1].fields)
        if op not in CONV_OPS or len(args) < 3 or not isinstance(args[2], tvm.ir.Constant):
            return None
        if not any(int(p) for p in func.attrs["bnn.padding"]):
            return None  # unpadded: the correction is all zeros, small enough to not matter
        build = kernel_builder(func, op)
        if build is None:
            return None
        data_shape = [int(v) for v in args[0].ty.shape.values]
        weight_shape = [int(v) for v in args[1].ty.shape.values]
        found = compact(
            args[2].value.numpy(), data_shape[1:3], weight_shape[1:3],
            [int(v) for v in func.attrs["bnn.strides"]], [int(v) for v in func.attrs["bnn.padding"]],
            bitserial.kernel_dilation(func.attrs),
        )
        if found is None:
            return None
        table, ycls, xcls = (relax.const(v) for v in found)
        attrs = {**dict(func.attrs), "bnn.compact_correction": 1}
        return mutator.builder_.call_te(
            build, args[0], args[1], table, ycls, xcls, *args[3:],
            primfunc_name_hint=call.args[0].name_hint + "_compact", primfunc_attrs=attrs,
        )

    return _drop_unused(rewrite_calls(mod, rewrite))


def _drop_unused(mod):
    """Remove PrimFuncs no Relax function calls any more (the replaced uncompacted kernels)."""
    import tvm
    from tvm import relax

    used = set()
    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, lambda e: used.add(e.name_hint) if isinstance(e, tvm.ir.GlobalVar) else None)
    kept = {gvar: func for gvar, func in mod.functions_items() if not isinstance(func, tvm.tirx.PrimFunc) or gvar.name_hint in used}
    return tvm.IRModule(kept, attrs=mod.attrs, global_infos=mod.global_infos)
