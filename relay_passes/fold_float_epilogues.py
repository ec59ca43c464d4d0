"""Fold the float ops after a binary conv/dense into the kernel, as its float epilogue.

A binary conv/dense produces an integer ``d``; the weight scale, bias, batch norm or scale after
it are per-channel float ops on ``float(d)``. Where that chain ends in a float consumer (a graph
output, a residual add, a float layer), the kernel computes it itself on its register tile:
each op in float32, in ONNX Runtime's order (batch norm as ``d * s + (beta - mean * s)``), each
rounded on its own (``schedules.bitserial.apply_epilogue`` keeps LLVM from fusing a multiply and
an add into one FMA). The result is bit-identical to the reference, at no size limit and
without a separate pass over the output.

For LLVM targets (CPUs); ``FoldFloatTables`` does the same with lookup tables for the rest
(CUDA, k-bit inputs). Chains whose float value is only known within a rounding band stay float.
"""

from __future__ import annotations

import tvm
from tvm import relax

from schedules import bitserial

from .common import PassLog, RuleContext
from .fold_float_tables import chain_ends
from .fold_thresholds import SCALE_INPUT, Step, analyse_chain, integer_dot

EPILOGUE_KERNELS = {"binary_conv2d": "binary_conv2d_epilogue", "binary_dense": "binary_dense_epilogue"}


def epilogue_rule(ends: set[str]):
    def fold_epilogue(ctx: RuleContext, expr):
        if ctx.binding not in ends or ctx.bnn_kernel(expr) is not None:
            return None
        chain = analyse_chain(ctx, expr)
        if chain is None or not chain.steps or chain.name not in EPILOGUE_KERNELS:
            return None
        if chain.error is not None and chain.error.size and chain.error.max() > 0:
            return None  # the float graph's own value is only known within rounding: keep float
        steps = ([Step("multiply", chain.scale)] if chain.scale is not None else []) + list(chain.steps)
        ops = tuple(step.op for step in steps)
        inputs = ctx.kernel_inputs(chain.source)[: SCALE_INPUT[chain.name]]
        dot = integer_dot(chain.name, chain.attrs)
        kernel = EPILOGUE_KERNELS[chain.name]
        ctx.fused(kernel, f"{chain.name} + {len(chain.steps)} float op(s) in its epilogue", *chain.visited[1:])
        params = {k[len("bnn.") :]: v for k, v in chain.attrs.items() if k.startswith("bnn.") and k != "bnn.op"}
        count = len(inputs)
        return ctx.emit_kernel(
            lambda *args: bitserial.dot_to_float_nchw(dot(*args[:count]), *args[count:], steps=ops),
            *inputs,
            *(relax.const(step.const) for step in steps),
            op=kernel,
            epilogue=",".join(ops),
            **params,
        )

    return fold_epilogue


def fold_float_epilogues(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    def transform(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        log = PassLog("FoldFloatEpilogues")
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                ctx = RuleContext(mod, epilogue_rule(chain_ends(func)), log)
                ctx.builder_.update_func(gvar, ctx.visit_expr(func))
                mod = ctx.builder_.get()
        if logs is not None:
            logs.append(log)
        return mod

    return tvm.transform.module_pass(transform, opt_level=0, name="FoldFloatEpilogues")
