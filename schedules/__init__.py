"""TIR schedules of the binary operators, per target family, and where they are applied.

``schedule_module(mod, spec)`` is called by the compiler on the Relax module after the
binarization passes and before ``tvm.compile``: it schedules every PrimFunc tagged ``bnn.op``
for the target family (``schedules.x86``, ``schedules.arm``; ``schedules.cuda`` when present).
On CPU families the float operators are then legalized and scheduled too
(``schedules.float_ops``: parallel, vectorised, bit-identical to TVM's default lowering).

A schedule may change the layout of a constant parameter (the weights: see
``schedules.cpu``); the call sites in the Relax functions then get the constant permuted the
same way, at compile time, so no layout change happens at run time.
"""

from __future__ import annotations

import importlib

import numpy as np

from .calls import OPAQUE_PATTERN, SCHEDULED_ATTR, legalize, rewrite_calls  # noqa: F401 (the package's API)

FAMILY_MODULES = {"x86": "bnn_tvm.schedules.x86", "arm": "bnn_tvm.schedules.arm", "cuda": "bnn_tvm.schedules.cuda"}


def family_module(family: str):
    """The schedule module of a target family, or None if there is none (yet)."""
    name = FAMILY_MODULES.get(family)
    if name is None:
        return None
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name == name:
            return None
        raise


def bnn_kernels(mod):
    """``(global var, PrimFunc, op name)`` of every kernel the binarization passes emitted."""
    import tvm

    for gvar, func in mod.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None and "bnn.op" in func.attrs:
            yield gvar, func, str(func.attrs["bnn.op"])


def schedule_module(mod, spec, plans: dict | None = None):
    """Schedule the binary kernels of ``mod`` for ``spec`` (a ``targets.TargetSpec``).

    ``plans``, if given, receives ``{kernel name: one-line description of its schedule}``.
    """
    module = family_module(getattr(spec, "family", "x86"))
    if module is None:
        return mod
    target = spec.tvm_target()
    if getattr(spec, "family", "x86") in ("x86", "arm"):
        mod = prepare_cpu_kernels(mod, spec, plans)
    scheduled = {}
    for gvar, func, op in list(bnn_kernels(mod)):
        result = module.schedule(func, op, target)
        # scheduled: the build pipeline must neither reschedule it nor fuse float ops into it
        result.func = result.func.with_attrs({**dict(func.attrs), SCHEDULED_ATTR: True, "op_pattern": OPAQUE_PATTERN})
        scheduled[gvar.name_hint] = result
        if plans is not None:
            plans[gvar.name_hint] = result.plan
    mod = replace_kernels(mod, scheduled)
    if getattr(spec, "family", "x86") in ("x86", "arm"):
        from . import float_ops

        if float_ops.enabled():
            mod = float_ops.schedule_float_ops(mod, target, vector_lanes32(spec), plans)
    elif spec.family == "cuda":
        mod = module.schedule_float_windows(mod, target, plans)
    return mod


def prepare_cpu_kernels(mod, spec, plans: dict | None = None):
    """The binarization pipeline's target-prepare phase for ``spec`` (``relay_passes.pipeline.
    prepare_passes``: float convs as kernels, the hand-written float ops), shared by the build
    and the tuner (``schedules.tuning.prepare_module``) so that both see the same kernels;
    ``plans`` receives the hand-written kernels' plans."""
    import tvm

    # here, not at the top: ``import schedules`` stays free of TVM for the CLI's start-up
    from bnn_tvm.relay_passes.pipeline import prepare_passes

    return tvm.transform.Sequential(prepare_passes(spec.family, vector_lanes32(spec), plans))(mod)


def vector_unit(spec):
    """The SIMD unit of a CPU target (``schedules.x86`` / ``schedules.arm``), None for others."""
    module = family_module(getattr(spec, "family", "x86"))
    return module.vector_unit(spec.tvm_target()) if module is not None and hasattr(module, "vector_unit") else None


def vector_lanes32(spec) -> int:
    """32-bit lanes of a target's vectors (4 for a family without a vector unit description)."""
    unit = vector_unit(spec)
    return unit.lanes if unit is not None else 4


def replace_kernels(mod, scheduled: dict):
    """Swap in the scheduled kernels (new global vars: a changed signature changes their type)
    and permute the constant arguments whose layout a schedule changed."""
    import tvm
    from tvm import relax

    call_tir = tvm.ir.Op.get("relax.call_tir")

    @relax.expr_functor.mutator
    class SwapKernels(relax.PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.new_vars = {}

        def visit_call_(self, call):  # noqa: N802 (TVM's visitor naming)
            call = self.visit_expr_post_order(call)
            if call.op != call_tir or call.args[0].name_hint not in scheduled:
                return call
            name = call.args[0].name_hint
            kernel = scheduled[name]
            if name not in self.new_vars:
                self.new_vars[name] = self.builder_.add_func(kernel.func, name)
            args = list(call.args[1].fields)
            for position, axes in kernel.relayouts.items():
                const = args[position]
                if not isinstance(const, tvm.ir.Constant):
                    raise ValueError(f"{name}: argument {position} is not a constant")
                args[position] = relax.const(np.ascontiguousarray(const.value.numpy().transpose(axes)))
            return relax.Call(
                call.op, [self.new_vars[name], relax.Tuple(args)] + list(call.args[2:]), call.attrs, call.ty_args
            )

    swap = SwapKernels(mod)
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            swap.builder_.update_func(gvar, swap.visit_expr(func))
    swapped = swap.builder_.get()
    kept = {gvar: func for gvar, func in swapped.functions_items() if gvar.name_hint not in scheduled or gvar in swap.new_vars.values()}
    return tvm.IRModule(kept, attrs=swapped.attrs, global_infos=swapped.global_infos)
