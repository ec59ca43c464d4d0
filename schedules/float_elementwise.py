"""Chains of elementwise float ops around ``erf`` (a transformer's GELU) as one CPU kernel.

A GELU reaches Relax either as one ``nn.gelu`` (PyTorch's ``Gelu`` op) or decomposed as the ONNX
graph writes it (``x * (0.5 * (Erf(x / sqrt 2) + 1))``: a divide, ``erf``, an add and two
multiplies, with reshapes between them). Legalized op by op, that is one kernel and one pass over
memory per op, each with the VM's allocation and call around it (BiBERT's FFN GELU on 64 x 1024
values: 5 kernels, about 80 us of a 0.24 ms layer). Here the whole chain, from the tensors it
starts from to its end, is one kernel that loads each input once and stores the end once:

* **Same arithmetic.** Every op computes the float32 expression of its legalization (``a / b``,
  ``a + b``, ``a * b``; ``nn.gelu`` as TVM's ``x * (0.5 + erf(x * sqrt(1/2)) * 0.5)`` stage by
  stage; ``erf`` as ``schedules.float_erf.erf_f32``), and each op's result passes an
  ``llvm.arithmetic.fence`` (``bitserial.contraction_fence``) before the next op reads it, so LLVM
  contracts no multiply of one op into an add of the next: every op rounds where its own kernel's
  store would have rounded. Results are bit-identical to the op-by-op kernels
  (``tests/test_float_elementwise.py``).
* **Vectors along the flat element order.** Reshapes are views of the same row-major order, so
  the kernel walks all tensors as one flat array, ``lanes`` values per vector, and a scalar tail.
* **The erf branches a vector needs.** ``erf_f32`` evaluates three polynomial branches and
  selects per lane; for ``|y| < 1`` (and NaN) it takes ``y + y * R(y^2)``. Per vector, when no
  lane's argument is ``>= 1`` in magnitude (``llvm.vector.reduce.or`` of the lane tests), only that
  branch is computed: the same expression, so the same values; otherwise all of ``erf_f32``. In
  BiBERT's FFN (pre-activations of standard deviation about 0.5) 93 % of 16-lane vectors take the
  short path; a vector with one large lane costs the whole ``erf_f32`` plus one compare.
* The vector loop runs in parallel chunks where the kernel does enough work
  (``cpu.PARALLEL_MIN_WORK``), serial otherwise.

Which chains: float32 ops ``add``, ``subtract``, ``multiply``, ``divide`` (operands: the chain's
values or scalar constants), ``erf``, ``nn.gelu``, and ``reshape`` views between them, whose
intermediate values have no reader outside the chain; a chain is rewritten only if it holds an
``erf`` or ``nn.gelu`` (other elementwise ops keep ``schedules.float_ops``' schedules). The inputs
(the chain's leaves) all have the output's number of elements.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.ir import Constant

from . import cpu, float_erf, float_ops
from .bitserial import contraction_fence
from .calls import rewrite_calls

BINARY = {
    "relax.add": lambda a, b: a + b,
    "relax.subtract": lambda a, b: a - b,
    "relax.multiply": lambda a, b: a * b,
    "relax.divide": lambda a, b: a / b,
}
UNARY = ("relax.erf", "relax.nn.gelu")
RESHAPE = "relax.reshape"
CHAIN_OPS = (*BINARY, *UNARY)


@dataclass(frozen=True)
class Node:
    """One value of a chain: an input (``leaf``: its index among the kernel's inputs), a scalar
    constant (``value``), or an op (``op``, a Relax op name, on ``args``)."""

    op: str | None = None
    args: tuple = ()
    leaf: int | None = None
    value: float | None = None


def _f32(value: float):
    return tirx.const(float(np.float32(value)), "float32")


def _vector(expr, lanes: int):
    return expr if lanes == 1 else tirx.Broadcast(expr, lanes)


def erf_arguments(node: Node) -> list[Node]:
    """The ``erf`` arguments of a chain (a GELU's is ``x * sqrt(1/2)``, built as its stages)."""
    found = []
    for arg in node.args:
        found += erf_arguments(arg)
    if node.op == "relax.erf":
        found.append(node.args[0])
    elif node.op == "relax.nn.gelu":
        found.append(Node("gelu_argument", (node.args[0],)))
    return found


def evaluate(node: Node, loads: list, lanes: int, small_erf: bool, memo: dict):
    """The float32 expression of ``node`` on vectors of ``lanes`` (1: scalars), each op's result
    fenced (module doc); ``small_erf``: every ``erf`` as its ``|y| < 1`` branch only."""
    key = id(node)
    if key in memo:
        return memo[key]
    if node.leaf is not None:
        value = loads[node.leaf]
    elif node.value is not None:
        value = _vector(_f32(node.value), lanes)
    else:
        args = [evaluate(arg, loads, lanes, small_erf, memo) for arg in node.args]
        erf = float_erf.erf_small_f32 if small_erf else float_erf.erf_f32
        if node.op in BINARY:
            value = contraction_fence(BINARY[node.op](*args))
        elif node.op == "relax.erf":
            value = contraction_fence(erf(args[0]))
        elif node.op == "gelu_argument":
            value = gelu_stages(args[0], lanes, erf)[0]
        else:  # relax.nn.gelu
            value = gelu_stages(args[0], lanes, erf)[-1]
    memo[key] = value
    return value


def gelu_stages(x, lanes: int, erf) -> list:
    """TVM's GELU (``float_erf.legalize_map``: ``x * (0.5 + erf(x * sqrt(1/2)) * 0.5)``) stage by
    stage, each fenced: ``[argument, erf, scaled, inner, result]``."""
    half = _vector(_f32(0.5), lanes)
    argument = contraction_fence(x * _vector(_f32(0.5**0.5), lanes))
    erf_value = contraction_fence(erf(argument))
    scaled = contraction_fence(erf_value * half)
    inner = contraction_fence(half + scaled)
    return [argument, erf_value, scaled, inner, contraction_fence(x * inner)]


def chain_kernel(root: Node, input_shapes: list, out_shape, lanes: int) -> tuple[tirx.PrimFunc, str]:
    """The PrimFunc computing ``root`` elementwise over the flat order of its inputs (module doc):
    ``lanes``-wide vectors (1: scalars only), a scalar tail."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    size = int(np.prod(out_shape))
    with IRBuilder() as builder:
        with T.prim_func():
            T.func_name("main")
            T.func_attr({"tirx.noalias": True})
            shapes = [*input_shapes, out_shape]
            names = [f"x{i}" for i in range(len(input_shapes))] + ["out"]
            buffers = [T.arg(name, T.buffer([int(d) for d in shape], "float32")) for name, shape in zip(names, shapes)]
            # the root block the Relax build expects of a PrimFunc; in it, flat views of the same
            # data (reshapes keep the row-major order) and the loops
            with T.sblock("root"):
                flats = [T.decl_buffer((size,), "float32", data=b.data) for b in buffers]
                plan = _emit_loops(T, root, flats[:-1], flats[-1], size, lanes)
    return builder.get(), ", ".join(["float: elementwise chain", *plan])


def _emit_loops(T, root: Node, inputs: list, out, size: int, lanes: int) -> list[str]:
    """The vector loop (a guarded ``erf`` per vector where the chain has one) and the scalar tail,
    emitted into the IR builder ``T``; returns the plan's parts."""
    arguments = erf_arguments(root)
    vectors = size // lanes if lanes > 1 else 0
    plan = []

    def store(index, count: int, small_erf: bool = False):
        at = tirx.Ramp(index, 1, count) if count > 1 else index
        T.buffer_store(out, evaluate(root, [flat[at] for flat in inputs], count, small_erf, {}), [at])

    if vectors:
        parallel = size >= cpu.PARALLEL_MIN_WORK and vectors > 1
        with (T.parallel if parallel else T.serial)(0, vectors) as v:
            if arguments:
                loads = [flat[tirx.Ramp(v * lanes, 1, lanes)] for flat in inputs]
                with T.If(any_large_argument(arguments, loads, lanes)):
                    with T.Then():
                        store(v * lanes, lanes)
                    with T.Else():
                        store(v * lanes, lanes, small_erf=True)
            else:
                store(v * lanes, lanes)
        plan.append(f"{lanes} lanes" + (", erf's |y| < 1 branch alone where all lanes take it" if arguments else ""))
        plan += ["parallel"] if parallel else []
    if vectors * lanes < size:
        with T.serial(vectors * lanes, size) as i:
            store(i, 1)
        plan.append(f"scalar tail of {size - vectors * lanes}")
    return plan


def any_large_argument(arguments: list, loads: list, lanes: int):
    """Whether any lane of any ``erf`` argument takes one of ``erf_f32``'s branches for ``|y| >= 1``
    (NaN does not: it compares false)."""
    memo: dict = {}
    large = None
    for argument in arguments:
        y = evaluate(argument, loads, lanes, False, memo)
        test = tirx.abs(y) >= tirx.Broadcast(_f32(1.0), lanes)
        large = test if large is None else tirx.Or(large, test)
    return tirx.call_llvm_pure_intrin("bool", "llvm.vector.reduce.or", large)


# --------------------------------------------------------------------------------------------
# The chains of a Relax module


def _op(call) -> str | None:
    return call.op.name if isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op) else None


def _size(expr) -> int | None:
    shape = getattr(expr.ty, "shape", None)
    try:
        return int(np.prod([int(d) for d in shape.values]))
    except (TypeError, AttributeError):
        return None


def _is_float32(expr) -> bool:
    return str(getattr(expr.ty, "dtype", "")) == "float32"


class ChainFinder:
    """The chains of one Relax function (module doc): ``ends`` are the chain ops whose value leaves
    the chain; ``tree(var)`` is the chain ending at ``var``."""

    def __init__(self, func: relax.Function):
        self.bound: dict = {}
        self.uses: dict = {}
        self.readers: dict = {}

        def visit(expr):
            if isinstance(expr, relax.Var):
                self.uses[expr] = self.uses.get(expr, 0) + 1

        relax.analysis.post_order_visit(func.body, visit)
        for block in func.body.blocks:
            for binding in block.bindings:
                if isinstance(binding, relax.VarBinding):
                    self.bound[binding.var] = binding.value
                    if isinstance(binding.value, relax.Call):
                        for arg in binding.value.args:
                            if isinstance(arg, relax.Var):
                                self.readers.setdefault(arg, []).append(binding.var)

    def _chain_op(self, var) -> bool:
        call = self.bound.get(var)
        return _op(call) in CHAIN_OPS and _is_float32(var) and all(
            isinstance(a, Constant) or _is_float32(a) for a in call.args)

    def _inner(self, var) -> bool:
        """``var`` is read once, by a chain op or a reshape that is itself inner."""
        readers = self.readers.get(var, [])
        if self.uses.get(var, 0) != 1 or len(readers) != 1:
            return False
        reader = readers[0]
        if self._chain_op(reader):
            return True
        return _op(self.bound.get(reader)) == RESHAPE and self._inner(reader)

    def ends(self) -> list:
        return [var for var in self.bound if self._chain_op(var) and not self._inner(var)]

    def _through_views(self, var):
        """``var``, or the input of the reshapes (read only inside the chain) it is a view of:
        the same values in the same flat order."""
        while _op(self.bound.get(var)) == RESHAPE and self._inner(var) and isinstance(self.bound[var].args[0], relax.Var):
            var = self.bound[var].args[0]
        return var

    def tree(self, end) -> tuple[Node, list] | None:
        """``(root, leaves)``: the chain ending at ``end`` and the tensors it reads; None where it
        holds no ``erf``/``nn.gelu`` or an operand is neither a chain value, a scalar constant nor
        a float32 tensor of the output's size."""
        size, leaves, built = _size(end), [], {}

        def operand(expr) -> Node | None:
            if isinstance(expr, Constant):
                value = expr.value.numpy() if hasattr(expr.value, "numpy") else np.zeros(0)
                return Node(value=float(value.reshape(()))) if value.size == 1 and value.dtype == np.float32 else None
            if not isinstance(expr, relax.Var) or _size(expr) != size or not _is_float32(expr):
                return None
            var = self._through_views(expr)
            if self._chain_op(var) and self._inner(var):
                return build(var)
            if var not in leaves:
                leaves.append(var)
                built[var] = Node(leaf=len(leaves) - 1)
            return built[var]

        def build(var) -> Node | None:
            if var not in built:
                call = self.bound[var]
                args = [operand(a) for a in call.args[: 1 if _op(call) in UNARY else 2]]
                if any(a is None for a in args) or all(a.value is not None for a in args):
                    return None  # (two constants: left to constant folding)
                built[var] = Node(_op(call), tuple(args))
            return built[var]

        if size is None:
            return None
        root = build(end)
        if root is None or not erf_arguments(root) or not leaves:
            return None
        return root, leaves


def rewrite_erf_chains(mod: tvm.IRModule, lanes32: int, plans: dict | None = None) -> tvm.IRModule:
    """Replace each chain (module doc) of ``mod``'s Relax functions by a call of its kernel
    (tagged scheduled, so the float op schedules leave it alone); the chain's ops, now unread,
    are removed. A no-op with ``BNN_LIBM_ERF`` set (the C library's ``erff``, scalar, as TVM
    lowers it)."""
    if not float_erf.enabled():
        return mod
    chains = {}
    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            finder = ChainFinder(func)
            for end in finder.ends():
                found = finder.tree(end)
                if found is not None:
                    chains[end] = found
    if not chains:
        return mod

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def visit_var_binding_(self, binding):  # noqa: N802 (TVM's visitor naming)
            if binding.var not in chains:
                return super().visit_var_binding_(binding)
            root, leaves = chains[binding.var]
            func, plan = chain_kernel(root, [[int(d) for d in l.ty.shape.values] for l in leaves],
                                      [int(d) for d in binding.var.ty.shape.values], lanes32)
            call = float_ops.call_hand_written(self, func, plan, "elementwise_chain",
                                               [self.visit_expr(l) for l in leaves], binding.var.ty, plans)
            self.builder_.emit_normalized(relax.VarBinding(binding.var, self.builder_.normalize(call)))

    rewriter = Rewriter(mod)
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gvar, relax.analysis.remove_all_unused(rewriter.visit_expr(func)))
    return rewriter.builder_.get()
