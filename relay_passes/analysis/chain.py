"""Chains of per-channel float ops after a binary kernel, as steps that round like ONNX Runtime.

Between a binary conv/dense and what reads it usually sit a bias, a batch norm, a scale, a clamp
or a PReLU. ``trace_chain`` walks back from a tensor through such ops (and views that keep the
channels) to the kernel and returns them as ``Step``s, each one float32 operation per channel;
``analyse_chain`` adds how the kernel's float value follows from its integer
(``analysis.rounding.ValueModel``), so that the chain can be evaluated at every integer the kernel
returns (``Chain.values``) and folded into an integer interval (``Chain.decision_interval``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.ir import Constant

from bnn_tvm.schedules import bitserial

from ..common import RuleContext, clip_bounds, op_name, shape_of
from .patterns import is_unit_axes_reshape, or_pool_refusal, points_max_rows
from .rounding import ValueModel, chain_values, decision_interval, kernel_value_model


FOLDABLE = {
    "binary_conv2d": "binary_conv2d_threshold",
    "binary_dense": "binary_dense_threshold",
    "multibit_conv2d": "multibit_conv2d_threshold",
    "ternary_conv2d": "ternary_conv2d_threshold",
    "ternary_dense": "ternary_dense_threshold",
}


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


def positional(values: np.ndarray, out_shape) -> np.ndarray | None:
    """A constant operand of an NCHW op as float32 ``[C|1, H|1, W|1]``: it may vary along the
    channels, rows and columns (XNOR++'s output scales ``[1, 1, H, 1]`` and ``[1, 1, 1, W]``),
    not along the batch, and broadcasting it must not widen the output. None otherwise."""
    if len(out_shape) != 4 or values.ndim > 4:
        return None
    full = values.astype(np.float32).reshape((1,) * (4 - values.ndim) + values.shape)
    if full.shape[0] != 1 or any(n not in (1, m) for n, m in zip(full.shape, out_shape)):
        return None
    return full[0].copy()


@dataclass(frozen=True)
class Step:
    """One float op of a chain: ``y (op) const`` (``bitserial.EPILOGUE_OPS`` names;
    ``rsubtract``/``rdivide`` put the constant first). Called on a float32 ``[C, K]`` array it
    rounds like ONNX Runtime's elementwise kernel: one float32 rounding per op.

    ``const`` is one value per channel, or for a positional step (``trace_chain(positional_consts=True)``)
    ``[C|1, H|1, W|1]``: per channel, row and column as it varies. The rounding analyses
    (``Chain.values``, ``decision_interval``) take per-channel steps only."""

    op: str
    const: np.ndarray  # float32 [C], or [C|1, H|1, W|1]

    @property
    def axes(self) -> str | None:
        """The axes a positional step's constant varies along (``bitserial.POSITION_AXES``), None
        for a per-channel step."""
        if self.const.ndim != 3:
            return None
        return "".join(axis for axis, n in zip(bitserial.POSITION_AXES, self.const.shape) if n > 1)

    @property
    def epilogue(self) -> str:
        """The step as a kernel's epilogue names it (``bitserial.positional_step`` if positional)."""
        return self.op if self.axes is None else bitserial.positional_step(self.op, self.axes)

    def __call__(self, y: np.ndarray) -> np.ndarray:
        if self.axes is not None:
            raise ValueError(f"{self.epilogue}: a positional step has no per-channel value")
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
    """``prelu(x, slope)`` with a constant slope: one per channel along the channel axis, or one
    for all (then its axis does not matter: the ONNX importer puts a one-value slope on the
    last axis)."""
    if op_name(call) != "relax.nn.prelu":
        return None
    slope = ctx.constant(call.args[1])
    if slope is None or slope.size not in (1, out_shape[1]) or (slope.size != 1 and int(call.attrs.axis) != 1):
        return None
    return Step("prelu", np.broadcast_to(slope.astype(np.float32).reshape(-1), (out_shape[1],)).copy())


def unary_steps(ctx: RuleContext, call, out_shape) -> list[Step] | None:
    """The steps of a one-operand chain op (a clamp, a PReLU), or None for any other op."""
    clamps = clamp_steps(call, out_shape[1])
    if clamps is not None:
        return clamps
    prelu = prelu_step(ctx, call, out_shape)
    return None if prelu is None else [prelu]


def binary_step(ctx: RuleContext, call, out_shape, positional_consts: bool = False):
    """``(step, source)`` for ``source (op) const`` or ``const (op) source``; a constant that is
    not per channel makes a positional step where ``positional_consts`` allows it."""
    op = RELAX_OPS.get(op_name(call))
    if op is None:
        return None
    lhs, rhs = call.args
    for source, other, const_first in ((lhs, rhs, False), (rhs, lhs, True)):
        values = ctx.constant(other)
        if values is None or ctx.constant(source) is not None:
            continue
        vec = per_channel(values, out_shape)
        if vec is None and positional_consts:
            vec = positional(values, out_shape)
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


def is_foldable_kernel(ctx: RuleContext, expr) -> bool:
    return ctx.bnn_kernel(expr) is not None and ctx.bnn_kernel(expr)[0] in FOLDABLE


def trace_chain(ctx: RuleContext, expr, is_source=is_foldable_kernel, pools: list | None = None,
                positional_consts: bool = False):
    """Walk from ``expr`` back through per-channel float ops to a source (by default a foldable
    binary op): ``(source var, steps kernel side first, vars tensor side first)``.

    With a ``pools`` list, the walk also crosses one max pool that can run on packed bits and
    appends ``(pool call, number of steps after it)`` to the list. ``positional_consts``: also
    through constant ops that vary along rows or columns (positional ``Step``s; for an
    epilogue, which evaluates each at its position)."""
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
        found = binary_step(ctx, node, out_shape, positional_consts) if isinstance(node, relax.Call) else None
        if found is None or shape_of(found[1]) != out_shape:
            return None
        steps.append(found[0])
        expr = found[1]


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

    @property
    def positional(self) -> bool:
        """Whether a step varies along rows or columns (no per-channel rounding analysis then)."""
        return any(step.axes is not None for step in self.steps)

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
        if self.positional:  # a decision per position, not per channel: not folded
            return None
        return decision_interval(self.steps, self.channels, self.model, strict)


def analyse_chain(ctx: RuleContext, expr, pools: list | None = None, positional_consts: bool = False) -> Chain | None:
    """The chain from a foldable binary kernel to ``expr``, or None if ``expr`` is not one
    (``pools``, ``positional_consts``: see ``trace_chain``)."""
    traced = trace_chain(ctx, expr, pools=pools, positional_consts=positional_consts)
    if traced is None:
        return None
    source, steps, visited = traced
    name, attrs = ctx.bnn_kernel(source)
    channels = shape_of(source)[1]
    return Chain(source, name, attrs, steps, visited, channels, kernel_value_model(ctx, source, name, attrs, channels))


def is_chain_step(value, operands, positional_consts: bool = False) -> bool:
    """What ``trace_chain`` can walk through: one variable operand, the others per-channel
    constants (a residual add has two variables; a spatially varying constant ends a chain
    unless ``positional_consts``)."""
    if not (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name in CHAIN_OPS):
        return False
    if sum(isinstance(v, relax.Var) for v in operands) != 1:
        return False
    out_shape = tuple(int(d) for d in value.args[0].ty.shape.values)
    # tensor constants (clip's bounds are scalar constants holding a float)
    constants = [v.value.numpy() for v in operands if isinstance(v, Constant) and hasattr(v.value, "numpy")]
    if value.op.name == "relax.nn.prelu" and len(constants) == 1 and constants[0].size == 1:
        return True  # one slope for all channels, on whichever axis
    if value.op.name in ("relax.nn.batch_norm", "relax.nn.prelu"):  # constants along their axis
        return int(value.attrs.axis) == 1
    return all(per_channel(c, out_shape) is not None or (positional_consts and positional(c, out_shape) is not None)
               for c in constants)


def chain_ends(func: relax.Function, positional_consts: bool = False) -> set[str]:
    """Variables read by something other than a per-channel float op (``positional_consts``: or
    positional, as ``trace_chain`` takes them) or a 1-D tensor's one-row view
    (``is_unit_axes_reshape``: ``trace_chain`` walks through it), or returned."""
    ends = set()
    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if not isinstance(binding.var, relax.DataflowVar):
                ends.add(binding.var.name)
            if isinstance(value, relax.TupleGetItem):
                continue
            operands = list(value.args) if isinstance(value, relax.Call) else list(getattr(value, "fields", [value]))
            # a call_tir (one of our kernels) takes its tensors as a tuple
            operands = [field for v in operands for field in (v.fields if isinstance(v, relax.Tuple) else [v])]
            if not (is_chain_step(value, operands, positional_consts) or is_unit_axes_reshape(value)):
                ends.update(v.name for v in operands if isinstance(v, relax.Var))
    return ends
