"""Fuse a TTQ conv's difference kernel into the conv kernel.

A TTQ conv (``{-a, 0, +b}`` weights, ``FuseBinaryConv2d``) is a binary or ternary kernel over
``2 * OC`` channels whose float outputs are ``b * P`` and ``a * N``, followed by the difference
kernel ``b * P - a * N`` (``kernels.emit_difference``), which by now also holds the float ops
and the residual add after it (``FoldFloatEpilogues``, ``FoldResidualAdd``). Where nothing
else reads the halves, one kernel computes it all on its register tile
(``bitserial.ttq_conv2d_float``): the integer results of the halves, ``float(P) * b`` and
``float(N) * a`` each rounded, their difference, then the same steps. The float operations
are the two kernels' in the same order, so the outputs are bit-identical; the kernel writes
``OC`` float channels instead of ``2 * OC`` and the second pass over them is gone.

The halves are interleaved in blocks of output channels (``bitserial.positive_half``), so a
tile of output channels reads one contiguous tile of halves.

For CPU targets, after ``FoldResidualAdd`` (the difference kernel's last fold); says whether it
changed the graph in its log. A TTQ dense keeps its difference kernel.
"""

from __future__ import annotations

import tvm
from tvm import relax

from bnn_tvm.schedules import bitserial

from .analysis.rounding import integer_inputs
from .analysis.weights import DIFFERENCE, split_halves
from .common import PassLog, RuleContext, function_rule_pass, use_counts
from .kernels import epilogue_steps, integer_dot, kernel_params

# a TTQ conv's halves kernel -> the fused kernel
FUSED_KERNELS = {name: f"{name}_ttq" for name in ("binary_conv2d", "ternary_conv2d")}


def ttq_rule(uses: dict):
    def fuse(ctx: RuleContext, expr):
        found = ctx.bnn_kernel(expr)
        if found is None or found[0] != DIFFERENCE:
            return None
        halves, *operands = ctx.kernel_inputs(expr)
        kernel = ctx.bnn_kernel(halves)
        if kernel is None or kernel[0] not in FUSED_KERNELS or "bnn.epilogue" in kernel[1]:
            return None
        if uses.get(halves, 0) != 1:  # the halves read elsewhere too: they stay a tensor
            return None
        name, attrs = kernel
        inputs = ctx.kernel_inputs(halves)
        count = integer_inputs(name, attrs)
        plus, minus = split_halves(ctx.constant(inputs[count]))
        steps = epilogue_steps(found[1])
        dot = integer_dot(name, attrs)
        fused = FUSED_KERNELS[name]
        ctx.fused(fused, f"TTQ conv's b*P - a*N{f' + {len(steps)} float op(s)' if steps else ''} in the conv "
                         f"kernel's epilogue (no difference kernel)", halves)
        return ctx.emit_kernel(
            lambda *args: bitserial.ttq_conv2d_float(dot(*args[:count]), *args[count:], steps=steps),
            *inputs[:count], relax.const(plus), relax.const(minus), *operands,
            op=fused, **kernel_params(attrs), **({"epilogue": ",".join(steps)} if steps else {}),
        )

    return fuse


def fuse_ttq_difference(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    return function_rule_pass(__name__, lambda func: ttq_rule(use_counts(func)), logs)
