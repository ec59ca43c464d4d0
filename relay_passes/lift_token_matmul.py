"""Rewrite a matmul of binarized tokens ``[N, T, C]`` as a dense over all ``N * T`` rows.

Transformer and MLP-Mixer layers apply ``x[N, T, C] @ W[C, O]`` to every token, with the
features on the last axis. A 3-D tensor otherwise binarizes as NCW (packed along axis 1, see
``lift_conv1d``), which is the wrong axis for this product. With a constant ``W``,
``matmul(b(x), W)`` becomes ``reshape(matmul(b(reshape(x, [N*T, C])), W), [N, T, O])``: the same
sums of the same products, and ``FuseBinaryDense`` sees a dense on packed rows. The binarizer
is rebuilt in its canonical form ``where(x >= 0, 1, -1)`` on the rows (it means exactly that in
every recognised form); the original one stays for any other reader.

The float ops after such a dense (a scale, a bias, a residual add, the next binarizer) would
see the ``[N, T, O]`` view of its rows and stay apart from it; elementwise ops on a token view
move onto the rows instead (constants that broadcast along the features only, other token
tensors viewed as rows), so that ``FoldThresholds`` and ``FoldFloatEpilogues`` find them after
the dense, and the next matmul reads the rows.

Before ``LowerBinarizers``; says whether it changed the graph in its log.
"""

from __future__ import annotations

from tvm import relax

from .common import RuleContext, either_rule, op_name, shape_of
from .lower_binarizers import binarized_input, pattern_names

LIFTED = "tokens_as_rows"  # the rewrite's name in the pass log: a view, not a kernel
ELEMENTWISE = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum", "relax.minimum",
               "relax.greater_equal", "relax.greater", "relax.less", "relax.less_equal", "relax.where", "relax.astype",
               "relax.clip", "relax.nn.relu", "relax.sign")


def token_rows(ctx: RuleContext, expr):
    """The ``[N*T, C]`` rows that the ``[N, T, C]`` tensor ``expr`` is a reshaped view of, or None."""
    producer = ctx.producer(expr)
    if op_name(producer) != "relax.reshape":
        return None
    rows, tokens = producer.args[0], shape_of(expr)
    shape = shape_of(rows)
    return rows if len(shape) == 2 and len(tokens) == 3 and shape == (tokens[0] * tokens[1], tokens[2]) else None


def as_rows(ctx: RuleContext, arg, tokens):
    """``arg`` of an elementwise op on ``tokens``-shaped tensors, for the same op on rows: a token
    view's rows, a scalar (a clip bound, a constant) or a per-feature constant as it is, another
    token tensor viewed as rows; None for a constant that varies along the tokens."""
    if not isinstance(arg.ty, relax.TensorType):
        return arg
    rows = token_rows(ctx, arg)
    if rows is not None:
        return rows
    values = ctx.constant(arg)
    if values is not None:
        if values.ndim <= 1 or values.shape[:-1] == (1,) * (values.ndim - 1):
            return relax.const(values.reshape(1, -1)) if values.ndim > 2 else arg
        return None
    if shape_of(arg) != tokens:
        return None
    return ctx.builder_.emit(relax.op.reshape(arg, [tokens[0] * tokens[1], tokens[2]]), "rows")


def sink_token_view(ctx: RuleContext, call):
    """``op(view(rows), ...)`` -> ``view(op(rows, ...))`` for an elementwise op on token views."""
    if op_name(call) not in ELEMENTWISE or len(shape_of(call)) != 3:
        return None
    tokens = shape_of(call)
    if not any(isinstance(a.ty, relax.TensorType) and token_rows(ctx, a) is not None for a in call.args):
        return None
    args = [as_rows(ctx, a, tokens) for a in call.args]
    if any(a is None for a in args):
        return None
    rows = ctx.builder_.emit(relax.Call(call.op, args, call.attrs), ctx.binding)
    ctx.alias((ctx.binding,), rows)  # no fusion of its own: a later fold credits it to its node
    return relax.op.reshape(rows, tokens)


def lift_matmul(ctx: RuleContext, call):
    if op_name(call) != "relax.matmul":
        return None
    data, weight = call.args
    values = ctx.constant(weight)
    if len(shape_of(data)) != 3 or values is None or values.ndim != 2 or not isinstance(data, relax.Var):
        return None
    n, t, c = shape_of(data)
    rows = token_rows(ctx, data)
    if rows is not None:  # the tokens already are a view of rows (binarized there)
        dense = ctx.builder_.emit(relax.op.matmul(rows, weight), ctx.binding)
        ctx.alias((ctx.binding,), dense)
        ctx.fused(LIFTED, f"matmul on {t} tokens computed as a dense over {n * t} rows")
        return relax.op.reshape(dense, [n, t, values.shape[1]])
    if op_name(ctx.producer(data)) == "relax.sign":  # torch.sign on tokens: Sign on the rows
        return lift_sign_matmul(ctx, data, weight, values.shape[1])
    found = binarized_input(ctx, ctx.producer(data), features_last=True)  # RSign's beta per feature
    if found is None or shape_of(found.x) != shape_of(data):
        return None
    x = found.x
    rows = ctx.builder_.emit(relax.op.reshape(x, [n * t, c]), data.name)
    compare = relax.op.greater if found.strict else relax.op.greater_equal
    positive = ctx.builder_.emit(compare(rows, relax.const(0.0, "float32")), data.name)
    bits = ctx.builder_.emit(relax.op.where(positive, relax.const(1.0, "float32"), relax.const(-1.0, "float32")), data.name)
    dense = ctx.builder_.emit(relax.op.matmul(bits, weight), ctx.binding)
    pattern = (data.name, *pattern_names(ctx, ctx.producer(data).args[0]))
    ctx.alias(pattern, rows, positive, bits)  # credited to the binarizer's nodes
    ctx.alias((ctx.binding,), dense)
    ctx.fused(LIFTED, f"matmul on {t} tokens computed as a dense over {n * t} rows")
    return relax.op.reshape(dense, [n, t, values.shape[1]])


def lift_sign_matmul(ctx: RuleContext, data, weight, outputs: int):
    """``matmul(Sign(x), W)`` on tokens as ``Sign`` of ``x``'s rows times ``W``: ``LowerSign`` may
    then prove the rows never 0, else ``SplitTernarySign`` makes the dense ternary."""
    n, t, c = shape_of(data)
    sign = ctx.producer(data)
    rows = ctx.builder_.emit(relax.op.reshape(sign.args[0], [n * t, c]), data.name)
    signs = ctx.builder_.emit(relax.op.sign(rows), data.name)
    dense = ctx.builder_.emit(relax.op.matmul(signs, weight), ctx.binding)
    ctx.alias((data.name,), rows, signs)  # credited to the Sign's node
    ctx.alias((ctx.binding,), dense)
    ctx.fused(LIFTED, f"matmul on {t} tokens computed as a dense over {n * t} rows")
    return relax.op.reshape(dense, [n, t, outputs])


lift_token_matmul = either_rule(lift_matmul, sink_token_view)
