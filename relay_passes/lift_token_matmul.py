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

In the same walk (the rows a matmul was just lifted to are what they move onto), per-channel ops
between two transposes move onto the rows (``sink_batch_norm``, ``sink_channel_op``):

    Move per-channel ops on a ``[B, C, N]`` transpose of point features onto the ``[B*N, C]`` rows.

    PointNet-style shared MLPs (BiPointNet) apply a linear layer to every point of ``x[B, N, C]``
    and a ``BatchNorm1d`` between two ``transpose(1, 2)``s: ``T(bn(T(x)))`` with ``T`` the
    ``[0, 2, 1]`` permutation. The batch norm normalises channel ``c`` of ``T(x)[b, c, n] =
    x[b, n, c]``, which is column ``c`` of the rows ``r = reshape(x, [B*N, C])``; so

        bn_axis1(T(x)) == T(reshape(bn_axis1(r), [B, N, C]))

    element for element: the same float32 ops (``x * s + (beta - mean * s)`` per channel) on the
    same values, only addressed differently. The same holds for every op that is elementwise with
    per-channel constants (a clamp, ReLU, PReLU along the channels, ``Sign``, a constant of shape
    ``[C, 1]`` or ``[1, C, 1]`` added or multiplied). Each such op on a ``T`` view of point features
    is rewritten to act on the rows, its result viewed back as ``[B, C, N]``; a transpose of that
    view then cancels (``T(T(y)) == y``), which leaves the ``[B, N, C]`` token view of the rows that
    ``LiftTokenMatmul`` moves the following Hardtanh, binarizer and matmul onto. The binary dense's
    batch norm thereby sits directly after it on its rows, where ``FoldThresholds`` and
    ``FoldFloatEpilogues`` find it, and no transpose kernel is left between two binary layers.
    A max (or min) over the points of such a transpose reduces axis 1 of ``[B, N, C]`` instead
    (``sink_points_max``): the public code's ``torch.max(x, 2)`` on the ``[B, C, N]`` layout.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .analysis.binarizers import binarized_input, pattern_names
from .analysis.patterns import token_rows
from .common import PassLog, RuleContext, either_rule, op_name, rule_pass, shape_of

LIFTED = "tokens_as_rows"  # the rewrite's name in the pass log: a view, not a kernel
POINTS_MAX = "max_over_rows"  # a float max over the points, reading the rows: not a kernel
ELEMENTWISE = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum", "relax.minimum",
               "relax.greater_equal", "relax.greater", "relax.less", "relax.less_equal", "relax.where", "relax.astype",
               "relax.clip", "relax.nn.relu", "relax.sign")


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
        return same_for_every_token(values)
    if shape_of(arg) != tokens:
        return None
    return ctx.builder_.emit(relax.op.reshape(arg, [tokens[0] * tokens[1], tokens[2]]), "rows")


def same_for_every_token(values):
    """A constant of the tokens' shape whose every token holds the same features (a bias that
    BiBERT's ``out += bias.view(1, -1).expand_as(out)`` expands to ``[N, T, C]``, folded): the
    ``[1, C]`` row they all hold, which broadcasts to the same value at every element; else None."""
    flat = values.reshape(-1, values.shape[-1])
    return relax.const(flat[:1].copy()) if values.ndim == 3 and np.all(flat == flat[:1]) else None


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


# --------------------------------------------------------------------------------------------
# per-channel ops on a [B, C, N] transpose of point features: onto the rows

ROWS = "channels_as_rows"  # the rewrite's name in the pass log: a view, not a kernel

SWAP = (0, 2, 1)  # torch's transpose(1, 2) of a 3-D tensor
UNARY = ("relax.clip", "relax.nn.relu", "relax.sign", "relax.nn.prelu")
BINARY = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum", "relax.minimum")


def permutation(call) -> tuple[int, ...] | None:
    """The axes of a ``permute_dims`` call, or None for anything else."""
    if op_name(call) != "relax.permute_dims" or call.attrs.axes is None:
        return None
    return tuple(int(a) for a in call.attrs.axes)


def channel_first_rows(ctx: RuleContext, expr):
    """``(rows [B*N, C], (B, N, C))`` when ``expr`` is the ``[B, C, N]`` transpose of point features
    ``[B, N, C]``; the rows are those the features are a view of, else a new reshape of them."""
    producer = ctx.producer(expr)
    if permutation(producer) != SWAP:
        return None
    points = producer.args[0]
    if len(shape_of(points)) != 3:
        return None
    b, n, c = shape_of(points)
    rows = token_rows(ctx, points)
    if rows is None:
        rows = ctx.builder_.emit(relax.op.reshape(points, [b * n, c]), "rows")
    return rows, (b, n, c)


def channel_first_view(rows, dims):
    """``T(reshape(rows, [B, N, C]))``: the rows' ``[B, C, N]`` view."""
    return relax.op.permute_dims(relax.op.reshape(rows, list(dims)), list(SWAP))


def per_channel_row_constant(ctx: RuleContext, arg, channels: int):
    """A constant operand of an op on ``[B, C, N]`` for the same op on ``[B*N, C]`` rows: a scalar
    as it is, a per-channel constant (``[C, 1]``, ``[1, C, 1]``) as ``[1, C]``; None otherwise."""
    values = ctx.constant(arg)
    if values is None:
        return arg if not isinstance(arg.ty, relax.TensorType) else None
    if values.size == 1:
        return relax.const(values.reshape(()))
    shape = (1,) * (3 - values.ndim) + values.shape
    if values.ndim > 3 or shape[0] != 1 or shape[1] != channels or shape[2] != 1:
        return None
    return relax.const(values.reshape(1, channels))


def sink_batch_norm(ctx: RuleContext, item):
    """``bn(T(x))[0]`` along the channels -> ``T(view(bn(rows)[0]))``."""
    if not isinstance(item, relax.TupleGetItem) or item.index != 0:
        return None
    bn = ctx.producer(item.tuple_value)
    if op_name(bn) != "relax.nn.batch_norm" or int(bn.attrs.axis) != 1 or bool(bn.attrs.training):
        return None
    found = channel_first_rows(ctx, bn.args[0])
    if found is None:
        return None
    rows, dims = found
    attrs = bn.attrs
    normed = ctx.builder_.emit(
        relax.op.nn.batch_norm(rows, *bn.args[1:], axis=1, epsilon=float(attrs.epsilon), center=bool(attrs.center),
                               scale=bool(attrs.scale), momentum=float(attrs.momentum), training=False),
        ctx.binding,
    )
    out = ctx.builder_.emit(relax.TupleGetItem(normed, 0), ctx.binding)
    ctx.alias((ctx.binding,), out)  # later folds credit the batch norm's node
    ctx.fused(ROWS, f"batch norm on the [B, C, N] transpose computed on {dims[0] * dims[1]} rows", bn.args[0])
    return channel_first_view(out, dims)


def sink_channel_op(ctx: RuleContext, call):
    """A per-channel elementwise op on ``T(x)`` -> ``T(view(op(rows)))``."""
    name = op_name(call)
    if name not in UNARY + BINARY or len(shape_of(call)) != 3:
        return None
    if name == "relax.nn.prelu" and int(call.attrs.axis) != 1:
        return None
    operands = call.args[:2] if name in BINARY else call.args[:1]
    views = [i for i, a in enumerate(operands) if is_channel_first(ctx, a)]
    if len(views) != 1:
        return None
    args = list(call.args)
    if name in BINARY:
        other = 1 - views[0]
        args[other] = per_channel_row_constant(ctx, args[other], shape_of(call)[1])
        if args[other] is None:
            return None
    view = call.args[views[0]]
    args[views[0]], dims = channel_first_rows(ctx, view)
    new = ctx.builder_.emit(relax.Call(call.op, args, call.attrs), ctx.binding)
    ctx.alias((ctx.binding,), new)
    ctx.fused(ROWS, f"per-channel op on the [B, C, N] transpose computed on {dims[0] * dims[1]} rows", view)
    return channel_first_view(new, dims)


def is_channel_first(ctx: RuleContext, expr) -> bool:
    """Whether ``expr`` is a ``[B, C, N]`` transpose of point features (emits nothing)."""
    producer = ctx.producer(expr)
    return permutation(producer) == SWAP and len(shape_of(producer.args[0])) == 3


def sink_points_max(ctx: RuleContext, call):
    """``max(T(x), axis=2)`` (or ``min``) over the points of a ``[B, C, N]`` transpose -> the same
    reduction over axis 1 of ``x[B, N, C]``: the same values per channel, reduced without the
    transpose (max and min are exact in any order). PyTorch's PointNet code pools
    ``torch.max(x, 2, keepdim=True)`` on the ``[B, C, N]`` layout its batch norms use; with
    ``keepdim`` the ``[B, C]`` result is viewed as ``[B, C, 1]``."""
    if op_name(call) not in ("relax.max", "relax.min") or call.attrs.axis is None:
        return None
    axes = [int(a) % 3 for a in call.attrs.axis] if len(shape_of(call.args[0])) == 3 else None
    if axes != [2] or not is_channel_first(ctx, call.args[0]):
        return None
    points = ctx.producer(call.args[0]).args[0]
    b, n, c = shape_of(points)
    keep = bool(call.attrs.keepdims)
    reduce = relax.op.max if op_name(call) == "relax.max" else relax.op.min
    pooled = ctx.builder_.emit(reduce(points, axis=[1], keepdims=False), ctx.binding)  # analysis.pools' form
    ctx.alias((ctx.binding,), pooled)
    ctx.fused(POINTS_MAX, f"{op_name(call)[6:]} over {n} points of the [B, C, N] transpose computed on [B, N, C]",
              call.args[0])
    return relax.op.reshape(pooled, [b, c, 1]) if keep else pooled


def cancel_transposes(ctx: RuleContext, call):
    """``permute(permute(x, p), q)`` with ``q`` undoing ``p`` -> ``x``."""
    outer = permutation(call)
    if outer is None:
        return None
    producer = ctx.producer(call.args[0])
    inner = permutation(producer)
    if inner is None or len(inner) != len(outer) or any(inner[outer[i]] != i for i in range(len(outer))):
        return None
    ctx.fused(ROWS, "a transpose undoing the transpose before it: removed")
    return producer.args[0]


def lift_token_matmul(logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    """One walk: a point MLP's batch norm between transposes moves onto the rows a matmul was just
    lifted to."""
    return rule_pass(__name__, either_rule(lift_matmul, sink_token_view, sink_batch_norm, sink_channel_op,
                                           sink_points_max, cancel_transposes), logs)
