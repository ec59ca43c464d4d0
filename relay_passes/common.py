"""What every binarization pass shares: walking bindings, reading constants, tagging our kernels.

Each pass is a small ``tvm.ir.transform`` module pass built from one rewrite rule (a function
``rule(rewriter, call) -> Expr | None``). A pass module ``relay_passes/<name>.py`` defines one
pass, the function ``<name>(logs=None, **options)`` returning it (``rule_pass(__name__, rule,
logs)`` or ``function_rule_pass``), named ``pass_name(__name__)`` (``FoldThresholds``); it imports
the analyses (``relay_passes.analysis``), the kernels passes share (``relay_passes.kernels``),
this module and computes (``schedules``), never another pass. ``relay_passes.pipeline`` orders
the passes into phases. The rewriter visits every call after its arguments, so a
rule sees its operands already rewritten, and it records what it changed in ``PassLog``.

Kernels emitted by the passes are ``call_tir`` calls whose PrimFunc carries the attribute
``bnn.op`` (its name) and the parameters later passes need to rebuild it (``bnn.taps``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import tvm
from tvm import relax
from tvm.ir import Constant

Rule = Callable[["RuleContext", relax.Call], "relax.Expr | None"]


@dataclass
class Rewrite:
    """One fusion: the ONNX nodes (binding names) it consumed and the kernel it became."""

    nodes: tuple[str, ...]
    kernel: str
    detail: str

    def __str__(self) -> str:
        return f"{self.detail} -> {self.kernel} [{', '.join(self.nodes)}]"


@dataclass
class PassLog:
    """What a pass did, so users, ``inspect`` and tests can see whether it changed the graph.

    ``kept_float`` maps a node to the reason a binary-looking pattern there stayed on the float path.
    """

    name: str
    rewrites: list[Rewrite] = field(default_factory=list)
    kept_float: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)  # new binding -> the bindings it stands for

    @property
    def changed(self) -> bool:
        return bool(self.rewrites)


@relax.expr_functor.mutator
class RuleContext(relax.PyExprMutator):
    """Applies one rule to every call of a module's Relax functions."""

    def __init__(self, mod: tvm.IRModule, rule: Rule, log: PassLog):
        super().__init__(mod)
        self.rule = rule
        self.log = log
        self.binding = ""  # name of the variable being bound: the ONNX node being rewritten

    def visit_var_binding_(self, binding):  # noqa: N802 (TVM's visitor naming)
        self.binding = binding.var.name
        super().visit_var_binding_(binding)

    def visit_call_(self, call):  # noqa: N802
        call = self.visit_expr_post_order(call)
        new = self.rule(self, call)
        return call if new is None else new

    def visit_tuple_getitem_(self, item):  # noqa: N802 (a batch norm's result is a tuple item)
        item = self.visit_expr_post_order(item)
        new = self.rule(self, item)
        return item if new is None else new

    def fused(self, kernel: str, detail: str, *nodes) -> None:
        """Log a rewrite of the binding being visited and ``nodes`` (variables or their names)."""
        names = [self.binding] + [n if isinstance(n, str) else n.name for n in nodes if isinstance(n, (str, relax.Var))]
        self.log.rewrites.append(Rewrite(tuple(dict.fromkeys(n for n in names if n)), kernel, detail))

    def alias(self, originals: tuple[str, ...], *new_vars) -> None:
        """Record that ``new_vars`` (bindings a rule emitted, whose names the builder made unique)
        compute the ops of the bindings ``originals``, so that what later passes fuse into them is
        credited to those ONNX nodes."""
        for var in new_vars:
            self.log.aliases[var.name] = tuple(originals)

    def logged_name(self, hint: str) -> str:
        """A name for a binding the log keys on (a bit tensor): ``hint`` after the binding being
        rewritten. Each pass's builder makes only its own names unique, and ``LoweredModel``
        resolves names across all passes."""
        return f"{self.binding}.{hint}" if self.binding else hint

    def keep_float(self, reason: str, *nodes) -> None:
        """Record why the binding being visited (and the given variables) stay float."""
        for name in [self.binding] + [n.name for n in nodes if isinstance(n, relax.Var)]:
            self.log.kept_float.setdefault(name, reason)

    # Helpers for rules -------------------------------------------------------------------------
    def producer(self, expr):
        """The expression bound to ``expr`` (through aliases) when it is a variable, else ``expr``."""
        while isinstance(expr, relax.Var):
            bound = self.lookup_binding(expr)
            if bound is None:
                return expr
            expr = bound
        return expr

    def scalar(self, expr) -> float | None:
        values = self.constant(expr)
        return float(values.reshape(())) if values is not None and values.size == 1 else None

    def uniform(self, expr, shape) -> float | None:
        """The value of a constant whose elements are all equal and whose shape broadcasts into
        ``shape`` (so an elementwise op gives the same shape with the scalar instead): PyTorch's
        ``torch.ones_like(x)`` exports as ``ConstantOfShape(Shape(x))``, a full tensor once the
        input shape is pinned and constants are folded."""
        values = self.constant(expr)
        if values is None or values.size == 0 or values.ndim > len(shape):
            return None
        if any(d not in (1, int(s)) for d, s in zip(values.shape[::-1], list(shape)[::-1])):
            return None
        first = values.flat[0]
        return float(first) if np.all(values == first) else None

    def constant(self, expr) -> np.ndarray | None:
        """The value of a constant tensor; None for anything else (a scalar ``PrimValue`` such as
        a clip's bound is a ``Constant`` too, but holds a number, not a tensor)."""
        expr = self.producer(expr)
        value = expr.value if isinstance(expr, Constant) else None
        return value.numpy() if hasattr(value, "numpy") else None

    def bnn_kernel(self, expr) -> tuple[str, dict] | None:
        """``(op name, attributes)`` when ``expr`` is (bound to) a call of one of our kernels."""
        call = self.producer(expr)
        if not (isinstance(call, relax.Call) and call.op == tvm.ir.Op.get("relax.call_tir")):
            return None
        func = self.builder_.get()[call.args[0]]
        if func.attrs is None or "bnn.op" not in func.attrs:
            return None
        return str(func.attrs["bnn.op"]), dict(func.attrs)

    def kernel_inputs(self, expr) -> list:
        """The tensor arguments of a ``call_tir`` that ``expr`` is bound to."""
        return list(self.producer(expr).args[1].fields)

    def emit_kernel(self, compute, *args, op: str, **attrs):
        """A ``call_tir`` of ``compute`` (a TE function), tagged so later passes recognise it."""
        attrs = {"bnn.op": op, **{f"bnn.{k}": v for k, v in attrs.items()}}
        return self.builder_.call_te(compute, *args, primfunc_name_hint=f"bnn_{op}", primfunc_attrs=attrs)


def use_counts(func: relax.Function) -> dict:
    """How many times each variable of ``func`` is read (a returned variable counts as read)."""
    counts: dict = {}

    def visit(expr):
        if isinstance(expr, relax.Var):
            counts[expr] = counts.get(expr, 0) + 1

    relax.analysis.post_order_visit(func.body, visit)
    return counts


def conv2d_like(call, data, padding=None):
    """``call`` (a ``conv2d``) on other ``data`` (and with other ``padding``), its weight and
    attributes otherwise unchanged."""
    attrs = call.attrs
    return relax.op.nn.conv2d(data, call.args[1], strides=attrs.strides,
                              padding=attrs.padding if padding is None else padding, dilation=attrs.dilation,
                              groups=attrs.groups, data_layout=str(attrs.data_layout),
                              kernel_layout=str(attrs.kernel_layout), out_layout=str(attrs.out_layout))


def op_name(call) -> str | None:
    return call.op.name if isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op) else None


def clip_bounds(call) -> tuple[float, float]:
    """``(lo, hi)`` of a ``relax.clip`` call (scalar bounds, not tensors)."""
    return float(call.args[1].value), float(call.args[2].value)


def shape_of(expr) -> tuple[int, ...]:
    return tuple(int(v) for v in expr.ty.shape.values)


def dtype_of(expr) -> str:
    return str(expr.ty.dtype)


def pass_name(module: str) -> str:
    """The name of the pass the module ``module`` defines: its file's name in CamelCase
    (``relay_passes.fold_thresholds`` -> ``FoldThresholds``); the name its log carries."""
    return "".join(word[:1].upper() + word[1:] for word in module.rpartition(".")[2].split("_"))


def rule_pass(module: str, rule: Rule, logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    """The pass of the module ``module`` (its ``__name__``; the pass is named by ``pass_name``):
    ``rule`` applied to every Relax function; its log goes to ``logs``."""
    name = pass_name(module)

    def transform(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        log = PassLog(name)
        ctx = RuleContext(mod, rule, log)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                ctx.builder_.update_func(gvar, ctx.visit_expr(func))
        if logs is not None:
            logs.append(log)
        return ctx.builder_.get() if log.changed else mod

    return tvm.transform.module_pass(transform, opt_level=0, name=name)


def either_rule(*rules):
    """A rule trying ``rules`` in order: the first rewrite wins."""

    def apply(ctx: RuleContext, expr):
        for rule in rules:
            new = rule(ctx, expr)
            if new is not None:
                return new
        return None

    return apply


def function_rule_pass(module: str, make_rule, logs: list[PassLog] | None = None) -> tvm.transform.Pass:
    """Like ``rule_pass``, for rules that need an analysis of the whole function first:
    ``make_rule(func)`` returns the rule for the Relax function ``func``."""
    name = pass_name(module)

    def transform(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        log = PassLog(name)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                ctx = RuleContext(mod, make_rule(func), log)
                ctx.builder_.update_func(gvar, ctx.visit_expr(func))
                mod = ctx.builder_.get()
        if logs is not None:
            logs.append(log)
        return mod

    return tvm.transform.module_pass(transform, opt_level=0, name=name)


def pack_planes(ternary: np.ndarray) -> np.ndarray:
    """Values in {-1, 0, +1} as two packed planes ``[2, ...]``: bit set where ``> 0`` (signs),
    and where ``!= 0`` (nonzeros); the last axis packed as by ``pack_bits``."""
    return np.stack([pack_bits(np.where(ternary > 0, 1, -1)), pack_bits(np.where(ternary != 0, 1, -1))])


def pack_bits(bipolar: np.ndarray, word_bits: int = 32) -> np.ndarray:
    """Pack the last axis of a ±1 array into uint32 words, bit 1 = +1, padding bits 0."""
    channels = bipolar.shape[-1]
    words = (channels + word_bits - 1) // word_bits
    bits = np.zeros(bipolar.shape[:-1] + (words * word_bits,), dtype=np.uint64)
    bits[..., :channels] = bipolar > 0
    bits = bits.reshape(bipolar.shape[:-1] + (words, word_bits))
    weights = np.uint64(1) << np.arange(word_bits, dtype=np.uint64)
    return (bits * weights).sum(axis=-1).astype(np.uint32)
