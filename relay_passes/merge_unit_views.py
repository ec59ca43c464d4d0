"""Merge the views the 1-D lift leaves between kernels: a reshape of a reshape is one reshape, a
reshape to its input's shape is its input, and a zero pad of the last axis between a kernel's
``[N, C, 1, L]`` output and a ``[N, C, 1, L + p]`` view of the pad pads the kernel's output
itself.

``LiftConv1d`` computes a 1-D conv over a one-row view and views its output back; once the
float ops after the convs are folded into them (``FoldFloatEpilogues``, ``FoldResidualAdd``),
consecutive kernels of a 1-D network (DFSMN's memory blocks) are joined by such views only. Each
costs the VM a call (``vm.builtin.reshape``) and a tensor object; merged, the kernels read each
other's outputs directly. The values are the same tensors: nothing is computed differently.

For every target, in the cleanup phase (after the folds).
"""

from __future__ import annotations

import tvm
from tvm import relax

from .analysis.patterns import is_unit_axes_reshape
from .common import PassLog, RuleContext, op_name, pass_name, shape_of


def merged_pad(ctx: RuleContext, call):
    """``pad(w, widths on the last axis)`` for ``reshape(pad(reshape(w)))`` (one-row views both,
    the pad constant on the last axis only), or None."""
    pad = ctx.producer(call.args[0])
    if op_name(pad) != "relax.nn.pad" or str(pad.attrs.pad_mode) != "constant":
        return None
    inner = ctx.producer(pad.args[0])
    if not is_unit_axes_reshape(inner):
        return None
    source = inner.args[0]
    width = [int(v) for v in pad.attrs.pad_width]
    before, after = width[-2:]
    if any(width[:-2]) or shape_of(source)[-1] != shape_of(pad.args[0])[-1]:
        return None
    target = shape_of(call)
    if target[:-1] != shape_of(source)[:-1] or target[-1] != shape_of(source)[-1] + before + after:
        return None
    widths = [0] * (2 * (len(target) - 1)) + [before, after]
    return relax.op.nn.pad(source, widths, pad_mode="constant", pad_value=float(pad.attrs.pad_value))


def merged_view(ctx: RuleContext, call):
    """The merged form of the reshape ``call``, or None."""
    if op_name(call) != "relax.reshape":
        return None
    data = call.args[0]
    inner = ctx.producer(data)
    if shape_of(data) == shape_of(call):
        merged = data
    elif op_name(inner) == "relax.reshape":
        source = inner.args[0]
        merged = source if shape_of(source) == shape_of(call) else relax.op.reshape(source, shape_of(call))
    elif is_unit_axes_reshape(call):
        merged = merged_pad(ctx, call)
    else:
        return None
    return merged


def merge_unit_views(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    """Like ``common.rule_pass``, but a merged view is no fusion: the log names no rewrite (a
    rewrite would credit the view's ONNX node, a residual add or a pad, to a view)."""
    name = pass_name(__name__)

    def transform(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        log = PassLog(name)
        merged = []

        def rewrite(ctx: RuleContext, call):
            new = merged_view(ctx, call)
            if new is not None:
                merged.append(ctx.binding)
            return new

        ctx = RuleContext(mod, rewrite, log)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                ctx.builder_.update_func(gvar, ctx.visit_expr(func))
        if logs is not None:
            logs.append(log)
        return ctx.builder_.get() if merged else mod

    return tvm.transform.module_pass(transform, opt_level=0, name=name)
