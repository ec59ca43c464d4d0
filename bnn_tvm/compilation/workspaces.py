"""Static workspaces: a compiled model's intermediate tensors made once per loaded module, not
once per call.

After Relax's ``StaticPlanBlockMemory`` every intermediate tensor of a statically shaped
``main`` is a view (``memory.alloc_tensor``) of a few planned storages
(``memory.alloc_storage``), and each output a fresh ``builtin.alloc_tensor``. The VM still
executes one instruction per view and per output on every call, and ``KillAfterLastUse`` adds
one more per view to drop it: for a model of many small kernels (DFSMN: 61 kernel calls, 57
views) those instructions cost a good part of the time. ``LiftWorkspaces``, run right after
``StaticPlanBlockMemory``, adds two functions beside ``main``:

* ``bnn_workspaces()``: the storages, their views, the output tensors and the reshapes of them
  (views too), returned as one tuple: every tensor ``main`` allocates, allocated in one call;
* ``bnn_main_planned(x, *workspaces)``: ``main``'s kernel calls writing into those tensors; it
  allocates nothing, so the VM runs only the kernels (and the input's checks).

``main`` itself stays as TVM compiles it (fresh tensors on every call, its outputs the caller's
to keep), for every caller of the module that knows only ``main``. ``runtime.CompiledRunner``
calls ``bnn_workspaces`` once when it loads a module and then only ``bnn_main_planned``, and
copies the outputs out: they live in its workspaces and the next call overwrites them. Nothing
is shared between two runners, or between two VMs of one module. Reusing the tensors is what
the VM's pooled allocator already did from call to call (a kernel never reads its output buffer
before writing it), so the results are the same. ``BNN_STATIC_WORKSPACES=0`` builds modules
without them (TVM's default pipeline, for comparisons; the runner then calls ``main``).
"""

from __future__ import annotations

import os

WORKSPACES_FUNC = "bnn_workspaces"
PLANNED_FUNC = "bnn_main_planned"

_LIFTED_OPS = ("relax.memory.alloc_storage", "relax.memory.alloc_tensor", "relax.builtin.alloc_tensor", "relax.reshape")


def enabled() -> bool:
    """Whether modules are built with static workspaces (``BNN_STATIC_WORKSPACES``, default on)."""
    return os.environ.get("BNN_STATIC_WORKSPACES", "1") not in ("0", "", "false", "no")


def _static_shape(expr) -> bool:
    """Whether ``expr`` (a shape argument) is a shape of constant integers."""
    from tvm import relax, tirx

    return isinstance(expr, relax.ShapeExpr) and all(isinstance(d, tirx.IntImm) for d in expr.values)


def _liftable(value, lifted: set) -> bool:
    """Whether a binding's value can be made once per module: a static allocation, a view of a
    lifted storage, a reshape (a view) of a lifted tensor, or another name of a lifted value."""
    import tvm
    from tvm import relax

    if isinstance(value, relax.Var):
        return value in lifted
    if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
        return False
    name = value.op.name
    if name not in _LIFTED_OPS:
        return False
    if name == "relax.memory.alloc_storage":
        return _static_shape(value.args[0])
    if name == "relax.memory.alloc_tensor":
        return value.args[0] in lifted and _static_shape(value.args[2])
    if name == "relax.builtin.alloc_tensor":
        return _static_shape(value.args[0])
    return value.args[0] in lifted and _static_shape(value.args[1])  # reshape


def split_bindings(func) -> tuple[list, list, dict]:
    """``(lifted, kept, roots)``: the bindings of ``func``'s body, in order, that make workspaces,
    the rest, and for each lifted name of another lifted value (``node_prelu = alloc``) that
    value. Nothing lifted for a body ``lift_workspaces`` does not handle (not lowered yet)."""
    from tvm import relax

    if not isinstance(func.body, relax.SeqExpr):
        return [], [], {}
    lifted_vars: set = set()
    lifted, kept, roots = [], [], {}
    for block in func.body.blocks:
        if isinstance(block, relax.DataflowBlock):  # not lowered yet: nothing was planned
            return [], [], {}
        for binding in block.bindings:
            if isinstance(binding, relax.VarBinding) and _liftable(binding.value, lifted_vars):
                lifted_vars.add(binding.var)
                lifted.append(binding)
                if isinstance(binding.value, relax.Var):
                    roots[binding.var] = roots.get(binding.value, binding.value)
            else:
                kept.append(binding)
    return lifted, kept, roots


def lift_workspaces(mod):
    """``mod`` with ``bnn_workspaces`` and ``bnn_main_planned`` made from ``main`` as the module
    docstring says; unchanged where ``main`` makes no static tensor."""
    import tvm
    from tvm import relax

    main = mod["main"]
    lifted, kept, roots = split_bindings(main)
    kept_body = relax.SeqExpr([relax.BindingBlock(kept)], main.body.body)
    free = set(relax.analysis.free_vars(kept_body))
    used = [b.var for b in lifted if b.var in free]
    workspaces = list(dict.fromkeys(roots.get(v, v) for v in used))
    if not workspaces:
        return mod
    pure = {"relax.force_pure": True}
    make = relax.Function([], relax.SeqExpr([relax.BindingBlock(lifted)], relax.Tuple(workspaces)),
                          relax.TupleType([w.ty for w in workspaces]), is_pure=True,
                          attrs=tvm.ir.DictAttrs({**pure, "global_symbol": WORKSPACES_FUNC}))
    # each other name of a workspace a parameter first, then bound to its workspace; the
    # workspaces come after main's inputs (``num_input``: the VM checks only those)
    aliases = [v for v in used if v in roots]
    attrs = {**(dict(main.attrs) if main.attrs is not None else {}), **pure, "global_symbol": PLANNED_FUNC}
    planned = relax.Function(list(main.params) + workspaces + aliases, kept_body, main.ret_ty, is_pure=True,
                             attrs=tvm.ir.DictAttrs(attrs)).bind_params({v: roots[v] for v in aliases})
    builder = relax.BlockBuilder(mod)
    builder.add_func(relax.utils.copy_with_new_vars(make), WORKSPACES_FUNC)
    builder.add_func(relax.utils.copy_with_new_vars(planned), PLANNED_FUNC)
    return builder.get()


def _lift_pass():
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="LiftWorkspaces")
    def lift(mod, _ctx):
        return lift_workspaces(mod)

    return lift


def build_pipeline(target):
    """The Relax pipeline ``tvm.compile`` runs for ``target`` with ``LiftWorkspaces`` right after
    ``StaticPlanBlockMemory``: TVM 0.27's ``default_build_pipeline`` on CPUs, its CUDA backend's
    default pipeline on CUDA (``tvm.relax.pipeline``'s own dispatch to it is broken in 0.27: it
    looks for ``dataflow_lower_passes`` where the package does not export it). ``"default"``, TVM's
    own choice without the lift, for any other kind of target."""
    import tvm
    from tvm.relax import backend, transform

    if target.kind.name == "cuda":
        from tvm.relax.backend.cuda import pipeline as cuda

        passes = (cuda.library_dispatch_passes(target) + cuda.legalize_passes(target)
                  + cuda.dataflow_lower_passes(target) + cuda.finalize_passes(target))
    elif target.kind.name == "llvm":
        passes = [backend.DispatchSampling(), backend.DispatchSortScan(), transform.LegalizeOps(),
                  transform.RewriteDataflowReshape(), transform.ToNonDataflow(), transform.RemovePurityChecking(),
                  transform.CallTIRRewrite(), transform.StaticPlanBlockMemory(), transform.RewriteCUDAGraph(),
                  transform.LowerAllocTensor(), transform.KillAfterLastUse(), transform.LowerRuntimeBuiltin(),
                  transform.ComputePrimValue(), transform.VMShapeLower(), transform.AttachGlobalSymbol()]
    else:
        return "default"
    planned = next(i for i, p in enumerate(passes) if p.info.name == "StaticPlanBlockMemory")
    passes.insert(planned + 1, _lift_pass())
    return tvm.transform.Sequential(passes, name="bnn_build_pipeline")
