"""What the schedules do to a Relax module's calls, shared by the schedule modules: the attributes
that mark a kernel scheduled, the legalization ``tvm.compile`` would run, and a call rewriter."""

from __future__ import annotations

OPAQUE_PATTERN = 8  # relax OpPatternKind::kOpaque
SCHEDULED_ATTR = "tirx.is_scheduled"  # tvm.compile's pipeline leaves such PrimFuncs as they are


def legalize(mod, target, vector_erf: bool = False):
    """Lower the Relax operators of ``mod`` to PrimFuncs with the passes ``tvm.compile``'s
    pipeline would run for ``target``, so that the float ones can be scheduled here first;
    ``vector_erf`` (CPU float schedules): float32 ``erf`` and GELU with the vectorisable
    ``schedules.float_erf`` instead of a libm call per element."""
    import tvm
    from tvm import relax

    from .float_erf import legalize_map

    with target:
        return tvm.transform.Sequential(
            [relax.backend.DispatchSampling(), relax.backend.DispatchSortScan(),
             relax.transform.LegalizeOps(legalize_map() if vector_erf else None)]
        )(mod)


def rewrite_calls(mod, rewrite):
    """``mod`` with ``rewrite(mutator, call)`` applied to every call of its Relax functions,
    arguments first (``mutator.builder_`` adds functions, ``mutator.lookup_binding`` reads
    bindings); ``rewrite`` returns the replacement, or None to keep the call."""
    from tvm import relax

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def visit_call_(self, call):  # noqa: N802 (TVM's visitor naming)
            call = self.visit_expr_post_order(call)
            new = rewrite(self, call)
            return call if new is None else new

    rewriter = Rewriter(mod)
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
    return rewriter.builder_.get()
