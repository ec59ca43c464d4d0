"""Rewrite a matmul of binarized tokens ``[N, T, C]`` as a dense over all ``N * T`` rows.

Transformer and MLP-Mixer layers apply ``x[N, T, C] @ W[C, O]`` to every token, with the
features on the last axis. A 3-D tensor otherwise binarizes as NCW (packed along axis 1, see
``lift_conv1d``), which is the wrong axis for this product. With a constant ``W``,
``matmul(b(x), W)`` becomes ``reshape(matmul(b(reshape(x, [N*T, C])), W), [N, T, O])``: the same
sums of the same products, and ``FuseBinaryDense`` sees a dense on packed rows. The binarizer
is rebuilt in its canonical form ``where(x >= 0, 1, -1)`` on the rows (it means exactly that in
every recognised form); the original one stays for any other reader.

Before ``LowerBinarizers``; says whether it changed the graph in its log.
"""

from __future__ import annotations

from tvm import relax

from .common import RuleContext, op_name, shape_of
from .lower_binarizers import binarized_input

LIFTED = "tokens_as_rows"  # the rewrite's name in the pass log: a view, not a kernel


def pattern_bindings(ctx: RuleContext, bits, x) -> tuple[str, ...]:
    """The names of the bindings from ``bits`` back to (not including) its binarizer's input ``x``."""
    names, todo = [], [bits]
    while todo:
        var = todo.pop()
        if not isinstance(var, relax.Var) or var.same_as(x) or var.name in names:
            continue
        names.append(var.name)
        producer = ctx.producer(var)
        todo.extend(producer.args if isinstance(producer, relax.Call) else [])
    return tuple(names)


def lift_token_matmul(ctx: RuleContext, call):
    if op_name(call) != "relax.matmul":
        return None
    data, weight = call.args
    values = ctx.constant(weight)
    if len(shape_of(data)) != 3 or values is None or values.ndim != 2 or not isinstance(data, relax.Var):
        return None
    x = binarized_input(ctx, ctx.producer(data))
    if x is None or shape_of(x) != shape_of(data):
        return None
    n, t, c = shape_of(data)
    rows = ctx.builder_.emit(relax.op.reshape(x, [n * t, c]), data.name)
    positive = ctx.builder_.emit(relax.op.greater_equal(rows, relax.const(0.0, "float32")), data.name)
    bits = ctx.builder_.emit(relax.op.where(positive, relax.const(1.0, "float32"), relax.const(-1.0, "float32")), data.name)
    dense = ctx.builder_.emit(relax.op.matmul(bits, weight), ctx.binding)
    ctx.alias(pattern_bindings(ctx, data, x), rows, positive, bits)  # credited to the binarizer's nodes
    ctx.alias((ctx.binding,), dense)
    ctx.fused(LIFTED, f"matmul on {t} tokens computed as a dense over {n * t} rows")
    return relax.op.reshape(dense, [n, t, values.shape[1]])
