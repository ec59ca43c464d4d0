"""Elementwise functions of one tensor read from the Relax graph as ``analysis.elementwise``
functions, for the proofs over every float32 input that the straight-through estimator passes make.

``FunctionBuilder`` follows a variable's producers back to a ``root`` tensor through the ops
``Elementwise`` bounds (and uniform constants); ``root_candidates`` lists the tensors a ``Sign``'s
estimator may be a function of, nearest first.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ..common import RuleContext, clip_bounds, dtype_of, op_name, shape_of
from .elementwise import RELAX_NAMED, Elementwise

ELEMENTWISE_OPS = {f"relax.{op}": op for op in RELAX_NAMED}  # Relax op -> Elementwise op


class Unsupported(Exception):
    """The estimator's operands are not elementwise functions of one tensor in ops we bound."""


APPROXIMATED = ("relax.tanh", "relax.exp", "relax.sigmoid", "relax.erf", "relax.log", "relax.sqrt", "relax.power")


class FunctionBuilder:
    """The DAG of ``Elementwise`` nodes computing some variables from one ``root`` tensor."""

    def __init__(self, ctx: RuleContext, shape, root):
        self.ctx, self.shape, self.root = ctx, tuple(shape), root
        self.function = Elementwise()
        self.names: list[str] = []  # the bindings the function covers, for the log
        self.index: list = [(root, self.function.add("input"))]  # (Relax expression, node)

    def node(self, expr) -> int:
        for known, index in self.index:
            if known.same_as(expr):
                return index
        index = self._build(expr)
        self.index.append((expr, index))
        if isinstance(expr, relax.Var) and not expr.same_as(self.root):
            self.names.append(expr.name)
        return index

    def _build(self, expr) -> int:
        value = self.ctx.uniform(expr, self.shape)
        if value is not None:
            return self.function.add("const", value=np.float32(value))
        node = self.ctx.producer(expr)
        name = op_name(node)
        if self._is_elementwise(node):
            if name == "relax.astype":
                return self.function.add("cast_float", self.node(node.args[0]))
            if name == "relax.clip":
                return self.function.add("clip", self.node(node.args[0]), value=clip_bounds(node))
            return self.function.add(ELEMENTWISE_OPS[name], *(self.node(a) for a in node.args))
        if name in APPROXIMATED:
            raise Unsupported(f"p computes {name.removeprefix('relax.')}, which float32 engines approximate differently")
        raise Unsupported("p is not an elementwise function of the sign's input alone")

    def _is_elementwise(self, node) -> bool:
        """An op we bound, on operands of the result's shape or uniform constants."""
        name = op_name(node)
        if name == "relax.astype":
            return str(node.attrs.dtype) == "float32" and dtype_of(node.args[0]) in ("bool", "float32")
        if name not in ELEMENTWISE_OPS or shape_of(node) != self.shape:
            return False
        operands = node.args[:1] if name == "relax.clip" else node.args
        return all(self.ctx.uniform(a, self.shape) is not None or shape_of(a) == self.shape for a in operands)


def root_candidates(ctx: RuleContext, sign_var) -> list:
    """Tensors that ``S`` and ``P`` may both be functions of, nearest first: the sign's input,
    then up through ops with one tensor operand (``sign(clip(x))`` with ``P = clip(x)``: over
    all of ``clip(x)``'s float32 values ``P`` is unbounded, over all of ``x``'s it is not)."""
    found = [ctx.producer(sign_var).args[0]]
    for _ in range(8):
        node = ctx.producer(found[-1])
        if not isinstance(node, relax.Call) or op_name(node) not in ELEMENTWISE_OPS:
            break
        tensors = [a for a in node.args if isinstance(a, relax.Var) and ctx.constant(a) is None]
        if len(tensors) != 1 or shape_of(tensors[0]) != shape_of(sign_var) or dtype_of(tensors[0]) != "float32":
            break
        found.append(tensors[0])
    return found
