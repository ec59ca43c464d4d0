"""Fold ``pack(affine chain(binary op))`` into the binary op: a per-channel integer interval.

Between a binary conv/dense and the next binarizer usually sit a bias, a batch norm, or a
scale. All are monotone per channel, so "``chain(d) >= 0``" holds on an interval of the integer
result ``d``. The interval is found by evaluating the chain on *every* integer ``d`` the layer
can produce, in float32 and in the order ONNX Runtime's CPU kernels compute it, so the integer
decision equals the float graph's decision, ties and negative scales included. The binary output
then stays packed for the next binary layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import relax

from schedules import bitserial

from .common import RuleContext, clip_bounds, is_power_of_two, op_name, pack_bits, shape_of
from .fuse_binary_conv2d import sum_rounding_error, weight_scale_error
from .fuse_binary_maxpool import emit_or_pool, or_pool_refusal
from .lift_conv1d import is_unit_axes_reshape
from .points_max_on_bits import emit_points_or, pooled_point_decisions, points_max_rows

# The open ends of a decision interval: beyond every integer a kernel returns (|d| <= levels *
# taps, far below 2^29) yet far from int32's limits. Once a schedule inlines d = taps - 2 m into
# ``low <= d <= high``, TVM's simplifier moves terms across the comparison (``taps <= high +
# 2 m``), which overflowed at INT32_MAX: wrong bits on CUDA, whose schedule inlines it.
OPEN_LOW, OPEN_HIGH = -(1 << 30), 1 << 30
FOLDABLE = {
    "binary_conv2d": "binary_conv2d_threshold",
    "binary_dense": "binary_dense_threshold",
    "multibit_conv2d": "multibit_conv2d_threshold",
    "ternary_conv2d": "ternary_conv2d_threshold",
    "ternary_dense": "ternary_dense_threshold",
}
SCALE_INPUT = {"binary_conv2d": 5, "binary_dense": 2, "multibit_conv2d": 3,  # input holding alpha
               "ternary_conv2d": 2, "ternary_dense": 2}


def integer_inputs(name: str, attrs: dict) -> int:
    """How many of a binary kernel's inputs its integer result reads (the weight scale, if any,
    follows them): ``SCALE_INPUT``, and for a binary dense with ternary weights one more, the
    per-output ``nonzeros - taps`` (``bitserial.binary_dense_dot``)."""
    return SCALE_INPUT[name] + int(name == "binary_dense" and "bnn.ternary_weights" in attrs)


def per_channel(values: np.ndarray, out_shape) -> np.ndarray | None:
    """A constant operand as one float32 value per channel (axis 1), or None if it varies otherwise
    or the output has no channel axis (a scalar or 1-D op of a weight or shape computation)."""
    if len(out_shape) < 2:
        return None
    probe_shape = (1,) + tuple(out_shape[1:])
    try:
        full = np.broadcast_to(values.astype(np.float32), probe_shape)
    except ValueError:
        return None
    if values.ndim > len(out_shape) or (values.ndim == len(out_shape) and values.shape[0] != 1):
        return None
    flat = full.reshape(probe_shape[:2] + (-1,))[0]  # [C, spatial]
    if not np.all(flat == flat[:, :1]):
        return None
    return flat[:, 0].copy()


@dataclass(frozen=True)
class Step:
    """One per-channel float op of a chain: ``y (op) const`` (``bitserial.EPILOGUE_OPS`` names;
    ``rsubtract``/``rdivide`` put the constant first). Called on a float32 ``[C, K]`` array it
    rounds like ONNX Runtime's elementwise kernel: one float32 rounding per op."""

    op: str
    const: np.ndarray  # float32 [C]

    def __call__(self, y: np.ndarray) -> np.ndarray:
        col = self.const[:, None]
        return NUMPY_OPS[self.op](y, col)


NUMPY_OPS = {
    "add": np.add,
    "subtract": np.subtract,
    "rsubtract": lambda y, c: np.subtract(c, y),
    "multiply": np.multiply,
    "divide": np.divide,
    "rdivide": lambda y, c: np.divide(c, y),
    "maximum": np.maximum,
    "minimum": np.minimum,
    "prelu": lambda y, c: np.where(y < 0, np.multiply(y, c), y),  # ONNX: x < 0 ? slope * x : x
}
RELAX_OPS = {"relax.add": "add", "relax.subtract": "subtract", "relax.multiply": "multiply", "relax.divide": "divide",
             "relax.maximum": "maximum", "relax.minimum": "minimum"}
CLAMP_OPS = ("relax.clip", "relax.nn.relu")
CHAIN_OPS = (*RELAX_OPS, *CLAMP_OPS, "relax.nn.prelu", "relax.nn.batch_norm")  # the per-channel float ops of a chain
STEP_OPS = tuple(op for op in CHAIN_OPS if op != "relax.nn.batch_norm")  # those with one output tensor
CONST_FIRST = {"subtract": "rsubtract", "divide": "rdivide"}  # add and multiply commute exactly


def batch_norm_steps(ctx: RuleContext, call, out_shape) -> list[Step] | None:
    """ONNX Runtime's inference BN: ``x * s + (beta - mean * s)``, ``s = gamma / sqrt(var + eps)``."""
    attrs = call.attrs
    if int(attrs.axis) != 1 or bool(attrs.training):
        return None
    consts = [ctx.constant(a) for a in call.args[1:]]
    if any(c is None for c in consts):
        return None
    gamma, beta, mean, var = (per_channel(c.reshape(-1, *[1] * (len(out_shape) - 2)), out_shape) for c in consts)
    if any(v is None for v in (gamma, beta, mean, var)):
        return None
    if not bool(attrs.scale):
        gamma = np.ones_like(gamma)
    if not bool(attrs.center):
        beta = np.zeros_like(beta)
    eps = np.float32(float(attrs.epsilon))
    inv_std = np.float32(1) / np.sqrt(var + eps)
    scale = inv_std * gamma
    shift = beta - mean * scale
    return [Step("multiply", scale), Step("add", shift)]


def clamp_steps(call, channels: int) -> list[Step] | None:
    """``clip(x, lo, hi)`` as ``maximum(lo)`` then ``minimum(hi)`` (how ONNX Runtime computes it),
    ``relu(x)`` as ``maximum(0)``; an infinite bound is no step. Hardtanh between a batch norm
    and the binarizer exports as such a clip."""
    name = op_name(call)
    if name == "relax.nn.relu":
        bounds = [("maximum", 0.0)]
    elif name == "relax.clip":
        bounds = list(zip(("maximum", "minimum"), clip_bounds(call)))
    else:
        return None
    return [Step(op, np.full(channels, bound, np.float32)) for op, bound in bounds if np.isfinite(bound)]


def prelu_step(ctx: RuleContext, call, out_shape) -> Step | None:
    """``prelu(x, slope)`` along the channel axis with a constant slope (one, or one per channel)."""
    if op_name(call) != "relax.nn.prelu" or int(call.attrs.axis) != 1:
        return None
    slope = ctx.constant(call.args[1])
    if slope is None or slope.size not in (1, out_shape[1]):
        return None
    return Step("prelu", np.broadcast_to(slope.astype(np.float32).reshape(-1), (out_shape[1],)).copy())


def unary_steps(ctx: RuleContext, call, out_shape) -> list[Step] | None:
    """The steps of a one-operand chain op (a clamp, a PReLU), or None for any other op."""
    clamps = clamp_steps(call, out_shape[1])
    if clamps is not None:
        return clamps
    prelu = prelu_step(ctx, call, out_shape)
    return None if prelu is None else [prelu]


def binary_step(ctx: RuleContext, call, out_shape):
    """``(step, source)`` for ``source (op) const`` or ``const (op) source``."""
    op = RELAX_OPS.get(op_name(call))
    if op is None:
        return None
    lhs, rhs = call.args
    for source, other, const_first in ((lhs, rhs, False), (rhs, lhs, True)):
        values = ctx.constant(other)
        if values is None or ctx.constant(source) is not None:
            continue
        vec = per_channel(values, out_shape)
        if vec is None:
            return None
        return Step(CONST_FIRST.get(op, op) if const_first else op, vec), source
    return None


def single_step(ctx: RuleContext, call):
    """``(steps, source)`` of a per-channel op with one output tensor (a constant op, a clamp,
    a PReLU: ``STEP_OPS``) on ``source``, or None for any other call."""
    if op_name(call) not in STEP_OPS:
        return None
    out_shape = shape_of(call)
    found = binary_step(ctx, call, out_shape)
    if found is not None:
        return [found[0]], found[1]
    steps = unary_steps(ctx, call, out_shape)
    return (steps, call.args[0]) if steps else None


def viewed_as(ctx: RuleContext, value, source, expr):
    """``value``, computed in the shape of the chain's ``source``, in the shape of the chain's
    end ``expr``: they differ when the chain crossed a 1-D tensor's one-row view."""
    if shape_of(source) == shape_of(expr):
        return value
    return relax.op.reshape(ctx.builder_.emit(value, ctx.binding), shape_of(expr))


def is_foldable_kernel(ctx: RuleContext, expr) -> bool:
    return ctx.bnn_kernel(expr) is not None and ctx.bnn_kernel(expr)[0] in FOLDABLE


def trace_chain(ctx: RuleContext, expr, is_source=is_foldable_kernel, pools: list | None = None):
    """Walk from ``expr`` back through per-channel float ops to a source (by default a foldable
    binary op): ``(source var, steps kernel side first, vars tensor side first)``.

    With a ``pools`` list, the walk also crosses one max pool that can run on packed bits and
    appends ``(pool call, number of steps after it)`` to the list."""
    if not hasattr(expr.ty, "shape"):
        return None  # a batch norm's tuple (its bindings share names with the tensor item)
    steps, visited = [], []
    out_shape = shape_of(expr)
    while True:
        visited.append(expr)
        if is_source(ctx, expr):
            return expr, steps[::-1], visited
        node = ctx.producer(expr)
        if is_unit_axes_reshape(node):  # a 1-D tensor's one-row view: the same channels
            expr = node.args[0]
            out_shape = shape_of(expr)
            continue
        if pools is not None and not pools and op_name(node) == "relax.nn.max_pool2d" and or_pool_refusal(node) is None:
            pools.append((node, len(steps)))
            expr = node.args[0]
            out_shape = shape_of(expr)
            continue
        rows = points_max_rows(ctx, node) if pools is not None and not pools else None
        if rows is not None:  # PointNet's max over the points of a dense's rows: the same channels
            pools.append((node, len(steps)))
            expr = rows
            out_shape = shape_of(expr)
            continue
        if isinstance(node, relax.TupleGetItem) and node.index == 0:
            bn = ctx.producer(node.tuple_value)
            if op_name(bn) != "relax.nn.batch_norm":
                return None
            bn_steps = batch_norm_steps(ctx, bn, out_shape)
            if bn_steps is None:
                return None
            steps.extend(reversed(bn_steps))  # steps are collected tensor side first
            visited.append(node.tuple_value)
            expr = bn.args[0]
            continue
        unary = unary_steps(ctx, node, out_shape) if isinstance(node, relax.Call) else None
        if unary is not None:
            steps.extend(reversed(unary))
            expr = node.args[0]
            continue
        found = binary_step(ctx, node, out_shape) if isinstance(node, relax.Call) else None
        if found is None or shape_of(found[1]) != out_shape:
            return None
        steps.append(found[0])
        expr = found[1]


def chain_values(steps, channels: int, model: "ValueModel", every_integer: bool = False) -> list[np.ndarray]:
    """float32 ``[channels, candidates]``: the chain at every integer ``d`` the kernel can produce
    (``candidates_of``: ``-levels * taps .. levels * taps``, of one ``parity`` when it has one;
    ``every_integer``: all of them, one column each, as a lookup table indexes them).

    The kernel's value is ``activation(d) * scale``: ``activation(d)`` is ``d`` for binary inputs,
    ``d / levels`` for DoReFa's k-bit ones (``levels = 2^k - 1``), ``d * activation_scale`` for a
    ``Quant``'s (``levels``: its largest ``|q - z|``); ±alpha weights have a ``scale``. With a
    rounding ``error`` band (the float conv's possible distance from it) the chain is also
    evaluated at both ends of the band, rounded outwards, and all three are returned.
    """
    taps, scale, error, levels, activation_scale = (model.taps, model.scale, model.error, model.levels,
                                                    model.activation_scale)
    candidates = candidates_of(taps, levels, None if every_integer else model.parity)
    d = np.broadcast_to(candidates.astype(np.float32), (channels, candidates.size))
    if activation_scale is not None:
        start = (d * np.float32(activation_scale)).astype(np.float32)
    else:
        start = d if levels == 1 else (d / np.float32(levels)).astype(np.float32)
    start = start if scale is None else (start * scale[:, None]).astype(np.float32)
    starts = [start]
    if error is not None and np.any(error > 0):
        band = error[:, None]
        starts.append(np.nextafter((start - band).astype(np.float32), np.float32(-np.inf)))
        starts.append(np.nextafter((start + band).astype(np.float32), np.float32(np.inf)))
    results = []
    with np.errstate(all="ignore"):
        for y in starts:
            for step in steps:
                y = step(y).astype(np.float32)
            results.append(y)
    return results


def candidates_of(taps: int, levels: int = 1, parity: int | None = None) -> np.ndarray:
    d = np.arange(-levels * taps, levels * taps + 1, dtype=np.int64)
    return d if parity is None else d[d % 2 == parity]


def result_parity(ctx: RuleContext, source, name: str, attrs: dict, taps: int, levels: int) -> int | None:
    """The parity of every integer a binary kernel returns, when they share one: ``d`` sums ±1
    over the taps inside the input (a zero-padded tap adds 0), so ``d`` has the parity of that
    count. Without zero padding (or with an explicit ±1 pad) every position has all ``taps``;
    with an even number of input channels every count is even. Odd ``d`` are then unreachable,
    and a threshold near one of them need not be refused (a BN folded into the weights by
    PyTorch's exporter puts thresholds anywhere)."""
    # a ternary input's or weight's zeros drop out of the sum, a k-bit input's (even a 1-bit
    # Quant's 0/1) sums any integers: any count of taps
    if levels != 1 or name.startswith(("ternary_", "multibit_")) or "bnn.ternary_weights" in attrs:
        return None
    if name == "binary_dense":
        return taps % 2
    padding = [int(p) for p in attrs.get("bnn.padding", [])]
    if int(attrs.get("bnn.pad_ones", 0)) or not any(padding):
        return taps % 2
    _, kh, kw, _ = shape_of(ctx.kernel_inputs(source)[1])  # packed weights [OC, KH, KW, CW]
    return 0 if (taps // (kh * kw)) % 2 == 0 else None


@dataclass(frozen=True)
class ValueModel:
    """How a kernel's float value follows from its integer ``d`` (``chain_values``)."""

    taps: int
    scale: np.ndarray | None  # ±alpha weights' per-channel scale
    error: np.ndarray | None  # bound of the float graph's distance from it, per channel
    levels: int  # the integer result lies in -levels * taps .. levels * taps
    parity: int | None  # of every integer the kernel returns, when they share one
    activation_scale: float | None = None  # a Quant input's scale: d * s instead of d / levels


def kernel_value_model(ctx: RuleContext, source, name: str, attrs: dict, channels: int) -> ValueModel:
    """How the kernel's float value follows from its integer.

    ``error`` bounds how far the float graph's own conv can be from that value; it is zero
    unless the weights carry a non-power-of-two scale or the input has k-bit levels: the float
    conv sums rounded terms (DoReFa's ``q/L * w``, a ``Quant``'s ``((q - z) * s) * w``) where
    the kernel rounds its exact sum once (``d / L`` or ``d * s``, then ``* alpha``).
    """
    taps = int(attrs["bnn.taps"])
    levels = int(attrs.get("bnn.levels", 1))
    parity = result_parity(ctx, source, name, attrs, taps, levels)
    inputs = ctx.kernel_inputs(source)
    count = integer_inputs(name, attrs)
    scale = ctx.constant(inputs[count]) if len(inputs) > count else None
    activation_scale = float(attrs["bnn.activation_scale"]) if "bnn.activation_scale" in attrs else None
    if activation_scale is not None:
        error = quant_input_error(taps, levels, activation_scale, scale, channels)
    elif levels == 1:
        error = weight_scale_error(scale, taps) if scale is not None else None
    else:
        # terms q/L * w: each q/L rounded once, and the kernel rounds d/L and d/L * alpha
        error = sum_rounding_error(taps, np.ones(channels) if scale is None else scale, roundings=3)
    if "bnn.weight_deviation" in attrs:  # weights a few ulp off ±alpha (see BinaryWeights), times |x|'s bound
        largest_input = 1.0 if activation_scale is None else levels * abs(activation_scale)
        error = error + np.array([float(v) for v in attrs["bnn.weight_deviation"]]) * largest_input
    return ValueModel(taps, scale, error, levels, parity, activation_scale)


def quant_input_error(taps: int, levels: int, activation_scale: float, scale, channels: int) -> np.ndarray:
    """The error band of a conv on a ``Quant``'s planes: terms ``((q - z) * s) * w`` of size at
    most ``levels * |s| * alpha``, each ``(q - z) * s`` rounded once, the kernel's ``d * s`` and
    ``* alpha`` once each (as DoReFa's ``q / L``). None of it rounds where s and alpha are powers
    of two and every partial sum is an integer multiple of ``s * alpha`` below 2^24 of them."""
    alpha = np.ones(channels) if scale is None else np.asarray(scale, np.float64)
    exact = is_power_of_two(np.array([activation_scale])) and (scale is None or is_power_of_two(scale))
    if exact and levels * taps < 2**24:
        return np.zeros(channels)
    return sum_rounding_error(taps, levels * abs(activation_scale) * alpha, roundings=3)


def decision_interval(steps, channels: int, model: "ValueModel", strict: bool = False):
    """Per channel ``[low, high]`` such that ``chain(d) >= 0`` (``strict``: ``> 0``) iff
    ``low <= d <= high``; None if no interval says it (not monotone, or a value within rounding
    error of the threshold)."""
    candidates = candidates_of(model.taps, model.levels, model.parity)
    decisions = [y > 0 if strict else y >= 0 for y in chain_values(steps, channels, model)]
    if any(np.any(other != decisions[0]) for other in decisions[1:]):
        return None
    decide = decisions[0]
    low = np.full(channels, 1, dtype=np.int64)
    high = np.full(channels, 0, dtype=np.int64)  # empty interval: never +1
    for c in range(channels):
        hits = np.flatnonzero(decide[c])
        if hits.size == 0:
            continue
        if hits[-1] - hits[0] + 1 != hits.size:
            return None  # not an interval: the chain is not monotone, keep it in float
        low[c] = OPEN_LOW if hits[0] == 0 else candidates[hits[0]]
        high[c] = OPEN_HIGH if hits[-1] == candidates.size - 1 else candidates[hits[-1]]
    return low.astype(np.int32), high.astype(np.int32)


@dataclass
class Chain:
    """A binary kernel's float output followed by per-channel float ops, up to some tensor."""

    source: object  # the kernel's output variable
    name: str  # the kernel's bnn.op
    attrs: dict
    steps: list[Step]  # the float ops, kernel side first
    visited: list  # their variables, tensor side first, the kernel's last
    channels: int
    model: ValueModel

    @property
    def taps(self) -> int:
        return self.model.taps

    @property
    def scale(self) -> np.ndarray | None:
        return self.model.scale

    @property
    def levels(self) -> int:
        return self.model.levels

    def values(self, every_integer: bool = False) -> list[np.ndarray]:
        """``chain_values`` at the integers the kernel can return (``every_integer``: at all of
        ``-levels * taps .. levels * taps``, one column each, as a lookup table indexes them)."""
        return chain_values(self.steps, self.channels, self.model, every_integer)

    @property
    def known_exactly(self) -> bool:
        """Whether the float graph's value at each integer is known exactly (no rounding band)."""
        error = self.model.error
        return error is None or not error.size or error.max() <= 0

    def decision_interval(self, strict: bool = False):
        return decision_interval(self.steps, self.channels, self.model, strict)


def analyse_chain(ctx: RuleContext, expr, pools: list | None = None) -> Chain | None:
    """The chain from a foldable binary kernel to ``expr``, or None if ``expr`` is not one
    (``pools``: see ``trace_chain``)."""
    traced = trace_chain(ctx, expr, pools=pools)
    if traced is None:
        return None
    source, steps, visited = traced
    name, attrs = ctx.bnn_kernel(source)
    channels = shape_of(source)[1]
    return Chain(source, name, attrs, steps, visited, channels, kernel_value_model(ctx, source, name, attrs, channels))


def fold_threshold(ctx: RuleContext, call):
    kernel = ctx.bnn_kernel(call)
    if kernel is None or kernel[0] != "pack_sign":
        return None
    pools = []
    chain = analyse_chain(ctx, call.args[1].fields[0], pools)
    if chain is None:
        return None
    source, steps, visited, name, attrs = chain.source, chain.steps, chain.visited, chain.name, chain.attrs
    interval = chain.decision_interval(strict=bool(int(kernel[1].get("bnn.strict", 0))))
    if interval is None:
        ctx.keep_float(
            "the float ops before the binarizer are not monotone per channel, or a reachable value "
            "lies within float rounding of the threshold (non-power-of-two weight scale)",
            *visited[:-1],  # the float ops, not the binary kernel
        )
        return None
    flip = None
    over_points = bool(pools) and op_name(pools[0][0]) == "relax.max"
    if over_points:
        refusal, interval, flip = pooled_point_decisions(chain, pools[0][1], interval, OPEN_LOW, OPEN_HIGH)
        if refusal is not None:
            ctx.keep_float(refusal, *visited[:-1])
            return None
    elif pools:
        refusal, interval, flip = pooled_decisions(chain, pools[0][1], interval)
        if refusal is not None:
            ctx.keep_float(refusal, *visited[:-1])
            return None
    low, high = (relax.const(v) for v in interval)
    inputs = ctx.kernel_inputs(source)[: integer_inputs(name, attrs)]  # integers compare without the scale
    ctx.fused(FOLDABLE[name], f"{name} + {len(steps)} float op(s) + binarizer", *visited)
    dot = integer_dot(name, attrs)
    params = kernel_params(attrs)
    packed = ctx.emit_kernel(
        lambda *args: bitserial.threshold_pack(dot(*args[:-2]), *args[-2:]),
        *inputs,
        low,
        high,
        op=FOLDABLE[name],
        **params,
    )
    if not pools:
        return packed
    if over_points:
        return emit_points_or(ctx, ctx.builder_.emit(packed, "thresholded"), pools[0][0], flip)
    return emit_or_pool(ctx, ctx.builder_.emit(packed, "thresholded"), pools[0][0], flip)


def pooled_decisions(chain: Chain, steps_after: int, interval):
    """``(refusal, interval, flip words)``: how a max pool inside a folded chain becomes a
    pool of thresholded bits, or why it cannot (``refusal``).

    ``binarize(g2(maxpool(g1(d))))``: when ``g1`` (the scale and the steps before the pool) never
    decreases, in float32 as in exact arithmetic, ``maxpool(g1(d)) = g1(max d)``, so the decision
    is the interval's on ``max d``. An interval open upwards (``max d >= low``) holds exactly when
    some ``d >= low`` in the window: threshold every position, then OR the bits (the pool's
    -inf padding is a 0 bit). One open downwards (a negative batch-norm gamma: ``max d <= high``)
    holds when every ``d <= high``: threshold the complement ``d > high``, OR, flip the bit back.
    """
    before = chain.steps[: len(chain.steps) - steps_after]
    if not (chain.scale is None or bool(np.all(chain.scale >= 0))) or not all(never_decreases(s) for s in before):
        return "a max pool after a float op that can decrease (negative scale) stays float", interval, None
    low, high = (v.astype(np.int64) for v in interval)
    downwards = (low == OPEN_LOW) & (high < OPEN_HIGH) & (low <= high)
    upwards_or_constant = (high == OPEN_HIGH) | (low > high)
    if not np.all(downwards | upwards_or_constant):
        return "a max pool before a float op that keeps only a bounded range of values stays float", interval, None
    low = np.where(downwards, high + 1, low)
    high = np.where(downwards, OPEN_HIGH, high)
    flip = pack_bits(np.where(downwards, 1.0, -1.0)) if np.any(downwards) else None
    return None, (low.astype(np.int32), high.astype(np.int32)), flip


def never_decreases(step: Step) -> bool:
    """Whether ``y -> step(y)`` is non-decreasing in float32 (rounding is monotone)."""
    if step.op in ("add", "subtract", "maximum", "minimum"):
        return True
    if step.op in ("multiply", "prelu"):
        return bool(np.all(step.const >= 0))
    if step.op == "divide":
        return bool(np.all(step.const > 0))
    return False


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
