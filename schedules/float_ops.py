"""CPU schedules (x86, ARM) of the float operators: the PrimFuncs ``LegalizeOps`` makes of the Relax
ops that stay float (residual ``add``, ``multiply``, ``nn.batch_norm``, pooling, ``mean``,
``matmul``, ...), which ``tvm.compile`` would otherwise lower with TVM's defaults (serial loops).

:func:`schedule_float_ops` is called by ``schedules.schedule_module`` after the binary kernels
are scheduled. It runs the head of ``tvm.compile``'s CPU pipeline itself (sampling and
sort/scan dispatch, ``LegalizeOps``, in the target's context), so that every Relax operator is a
PrimFunc, and schedules each PrimFunc not already tagged ``tirx.is_scheduled`` (the binary
kernels, tuned kernels stay as they are). ``tvm.compile`` then finds nothing left to legalize
and, like its default CPU pipeline, does not fuse operators: each kernel is scheduled alone.

The schedules do not change arithmetic, so results are bit-identical to the default lowering:

* every output is computed by the same expression; reduction loops stay serial, in their
  original order, around the vectorised spatial loop (a pooling window, a ``mean``, the ``k`` of
  a ``matmul`` are summed in the same order; only *which outputs* share a vector changes);
* an intermediate block is inlined into its consumer only where that cannot create a new
  multiply-add: TVM's LLVM backend contracts ``a * b + c`` into an FMA (one rounding instead of
  two), so a producer containing a float multiply is never inlined into a consumer that adds
  or subtracts (``batch_norm``'s ``x * gamma`` stays a stored intermediate before ``+ beta``);
* a small producer broadcast into a larger consumer (``sqrt(var + eps)`` per channel) stays
  its own loop, computed once per channel, not once per element;
* a reduction strided along its innermost output loop (LayerNorm's row sums over the hidden
  axis) accumulates 8 outputs side by side in registers, each in its order (independent chains);
* the one exception to bit-identity: float32 ``erf`` (GELU, ONNX ``Erf``) is legalized with
  ``schedules.float_erf`` (vectorisable, within 1 ulp of libm's ``erff``, the same sign and ±1
  set; see docs/exactness.md) instead of a libm call per element;
* max pools, matmuls with a constant weight, LayerNorms and chains of elementwise ops around
  ``erf`` have hand-written kernels instead (``relay_passes.hand_written_float_ops``, the
  pipeline's target-prepare phase): ``schedules.max_pool`` (no padded copy of the input; max is
  exact in any order), ``schedules.float_matmul`` (the weight blocked at compile time; same sums,
  same order), ``schedules.layer_norm`` (rows' sums as vectors, each in its order) and
  ``schedules.float_elementwise`` (a GELU in one pass, each op rounded as its own kernel).

Per top-level block: the trailing spatial loops whose product a vector width divides are fused
and split into ``[outer, lanes]`` (lanes from the target's vector unit, as ``schedules.x86`` /
``schedules.arm`` define it, halved until it divides); the inner part is vectorised, the outer
spatial loops are fused into one parallel loop (only where the kernel does enough work), and a
reduction block gets its reduction loops between the two, its init split off
(``decompose_reduction``) and vectorised too.

``BNN_FLOAT_SCHEDULES=0`` turns this off (TVM's default lowering, for comparisons); a kernel
whose schedule fails keeps the default lowering (``BNN_STRICT_SCHEDULES`` makes that an error).
"""

from __future__ import annotations

import logging
import os

import tvm
from tvm import s_tir, tirx

from .calls import SCHEDULED_ATTR, legalize
from .cpu import PARALLEL_MIN_WORK, block_work

LOG = logging.getLogger(__name__)

FLOAT_OP_ATTR = "bnn.float_op"  # the plan of a scheduled float kernel (for tests, inspect)
PARALLEL_MIN_CHUNKS = 64  # parallel chunks wanted of a nest left in its default loop order
UNROLL_FACTORS = (4, 5, 3, 2)  # independent vector accumulators of a reduction (hide the add latency)
INTERLEAVE_FACTORS = (8, 4, 2)  # outputs of a strided reduction accumulated side by side (independent chains)


def enabled() -> bool:
    return os.environ.get("BNN_FLOAT_SCHEDULES", "1") not in ("0", "", "false", "no")


def call_hand_written(mutator, func, plan: str, name: str, args: list, out_ty, plans: dict | None = None):
    """A ``call_tir`` of a hand-scheduled float kernel ``func`` (tagged scheduled, with its
    ``plan``) added to the module under ``name``; ``plans`` receives the plan."""
    from tvm import relax

    func = func.without_attr("global_symbol").with_attrs({SCHEDULED_ATTR: True, FLOAT_OP_ATTR: plan})
    gvar = mutator.builder_.add_func(func, name)
    if plans is not None:
        plans[gvar.name_hint] = plan
    return relax.call_tir(gvar, args, out_ty)


def schedule_float_ops(mod, target, lanes32: int, plans: dict | None = None):
    """Legalize the Relax operators of ``mod`` as ``tvm.compile``'s CPU pipeline would and schedule
    every resulting PrimFunc not yet tagged ``tirx.is_scheduled``. ``lanes32``: 32-bit lanes
    of the target's vectors. ``plans``, if given, receives ``{kernel name: plan}``."""
    mod = legalize(mod, target, vector_erf=True)
    updates = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or SCHEDULED_ATTR in (func.attrs or {}):
            continue
        try:
            scheduled, plan = schedule_func(func, lanes32)
        except Exception as err:  # noqa: BLE001 (any failure: keep TVM's default lowering)
            if os.environ.get("BNN_STRICT_SCHEDULES"):
                raise
            LOG.info("float kernel %s left to the default lowering: %s", gvar.name_hint, str(err).splitlines()[0][:200])
            if plans is not None:
                plans[gvar.name_hint] = f"float: default lowering ({str(err).splitlines()[0][:120]})"
            continue
        if scheduled is None:
            continue
        updates[gvar] = scheduled.with_attrs({SCHEDULED_ATTR: True, FLOAT_OP_ATTR: plan})
        if plans is not None:
            plans[gvar.name_hint] = plan
    for gvar, func in updates.items():
        mod[gvar] = func
    return mod


# --------------------------------------------------------------------------------------------
# Expressions: which float operations a block computes


def _is_load(expr) -> bool:
    # (``tirx.BufferLoad`` is a factory function; the node class is ``tvm.ir.expr.TensorLoad``)
    return type(expr).__name__ in ("BufferLoad", "TensorLoad") or (hasattr(expr, "buffer") and hasattr(expr, "indices"))


def _dtype(expr) -> str:
    ty = getattr(expr, "ty", None)  # (TVM 0.27 PrimExprs: ``expr.ty.dtype``; older: ``expr.dtype``)
    dtype = getattr(ty, "dtype", None) if ty is not None else getattr(expr, "dtype", None)
    return str(dtype) if dtype is not None else "unknown"


def _float_ops(expr, found: set) -> None:
    """Collect the kinds of float arithmetic (``mul``, ``add``) in ``expr``; ``unknown`` for a node
    this walker does not know (treated as possibly both by the caller)."""
    if isinstance(expr, (tirx.IntImm, tirx.FloatImm, tvm.ir.StringImm, tirx.Var)):
        return
    is_float = _dtype(expr).startswith(("float", "bfloat", "unknown"))
    if isinstance(expr, tirx.Mul):
        if is_float:
            found.add("mul")
    elif isinstance(expr, (tirx.Add, tirx.Sub)):
        if is_float:
            found.add("add")
    if _is_load(expr):
        children = list(expr.indices)
    elif hasattr(expr, "a") and hasattr(expr, "b"):
        children = [expr.a, expr.b]
    elif isinstance(expr, tirx.Cast):
        children = [expr.value]
    elif isinstance(expr, tvm.ir.Call):
        children = list(expr.args)
    elif isinstance(expr, tirx.Select):
        children = [expr.condition, expr.true_value, expr.false_value]
    elif isinstance(expr, tirx.Not):
        children = [expr.a]
    else:
        found.add("unknown")
        return
    for child in children:
        if isinstance(child, tvm.ir.Expr):
            _float_ops(child, found)


def _block_ops(sch, block) -> set:
    found: set = set()
    store = sch.get(block).body
    if not isinstance(store, tirx.BufferStore):
        return {"unknown"}
    _float_ops(store.value, found)
    return found


def _may_contract(producer_ops: set, consumer_ops: set) -> bool:
    """Inlining could put a float multiply under an add/sub (an FMA the default lowering has not)."""
    return bool(producer_ops & {"mul", "unknown"}) and bool(consumer_ops & {"add", "unknown"})


def _is_copy(sch, block) -> bool:
    store = sch.get(block).body
    return isinstance(store, tirx.BufferStore) and _is_load(store.value)


def _inline_intermediates(sch) -> int:
    """Inline the spatial intermediate blocks that can be inlined without changing arithmetic or
    multiplying work; returns how many were inlined."""
    inlined = 0
    changed = True
    while changed:
        changed = False
        outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(sch.get_sblock("root"))}
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            stmt = sch.get(block)
            if stmt.name_hint in outputs or any(int(iv.iter_type) != 0 for iv in stmt.iter_vars) or stmt.init is not None:
                continue
            consumers = sch.get_consumers(block)
            if not consumers:
                continue
            ops = _block_ops(sch, block)
            size = block_work(sch, block)
            copy = _is_copy(sch, block)
            if any(_may_contract(ops, _block_ops(sch, c)) for c in consumers):
                continue
            if not copy and any(block_work(sch, c) > size for c in consumers):
                continue  # a per-channel value broadcast: compute it once, not per element
            try:
                sch.compute_inline(block)
            except (RuntimeError, tvm.error.InternalError):
                continue
            inlined += 1
            changed = True
            break
    return inlined


# --------------------------------------------------------------------------------------------
# Loop nests


def _loop_kinds(sch, block, loops):
    """``'S'``/``'R'`` per loop of ``block`` (a loop bound to one iter var of that kind), or None
    when the bindings are not one loop per iter var."""
    realize = sch.get(loops[-1]).body
    if not isinstance(realize, s_tir.SBlockRealize):
        return None
    stmt = realize.block
    by_var = {}
    for iv, value in zip(stmt.iter_vars, realize.iter_values):
        if not isinstance(value, tirx.Var):
            return None
        by_var[value] = "S" if int(iv.iter_type) == 0 else ("R" if int(iv.iter_type) == 2 else None)
    kinds = []
    for loop in loops:
        var = sch.get(loop).loop_var
        if var not in by_var or by_var[var] is None:
            return None
        kinds.append(by_var[var])
    if not isinstance(sch.get(loops[0]).extent, tirx.IntImm) or any(
        not isinstance(sch.get(l).extent, tirx.IntImm) for l in loops
    ):
        return None
    return kinds


def _widest(extent: int, lanes_max: int) -> int:
    """The widest vector (``lanes_max`` halved down to 4) that divides ``extent``; 0 if none."""
    lanes = lanes_max
    while lanes >= 4:
        if extent % lanes == 0:
            return lanes
        lanes //= 2
    return 0


def _unit_stride(sch, block, var) -> bool:
    """Whether every buffer ``block`` reads or writes is accessed at unit stride (or invariantly)
    along its iter var ``var``: in the last dimension only, coefficient 0 or 1. A strided or
    gathered access (a pooling window with stride 2) is left to LLVM's loop vectorizer, which
    turns it into wide loads and shuffles; an explicit TVM vector would load it lane by lane."""
    from tvm import sym

    stmt = sch.get(block)
    for region in list(stmt.reads) + list(stmt.writes):
        dims = list(region.region)
        for position, rng in enumerate(dims):
            linear = sym.detect_linear_equation(rng.min, [var])
            if len(linear) == 0:
                return False
            coeff = linear[0]
            if not isinstance(coeff, tirx.IntImm):
                return False
            allowed = (0, 1) if position == len(dims) - 1 else (0,)
            if int(coeff.value) not in allowed:
                return False
    return True


def _windowed(sch, block, var) -> bool:
    """Whether ``block`` reads along its iter var ``var`` in the last dimension at a stride above
    one: a pooling window sliding along a row (``x * 2 + rx``). Such a reduction keeps the default
    loop order, which LLVM's loop vectorizer turns into wide loads and shuffles (Bi-Real's 2x2
    average pools on the Cortex-A53: 12 executed instructions per output, against 112 with the
    outputs interleaved in scalar registers); interleaving is for rows of a reduction along the
    last dimension (LayerNorm), where ``var`` strides an outer dimension."""
    from tvm import sym

    for region in sch.get(block).reads:
        last = list(region.region)[-1]
        linear = sym.detect_linear_equation(last.min, [var])
        if len(linear) and isinstance(linear[0], tirx.IntImm) and abs(int(linear[0].value)) > 1:
            return True
    return False


def _iter_var_of(sch, block, loop):
    realize = sch.get(sch.get_loops(block)[-1]).body
    var = sch.get(loop).loop_var
    for iv, value in zip(realize.block.iter_vars, realize.iter_values):
        if value.same_as(var):
            return iv.var
    return None


def _schedule_nest(sch, block, lanes32: int) -> str:
    """Parallel + vectorised loop nest of one top-level block; the reduction loops keep their
    order, serial, between the parallel and the vector loop. Returns a short plan."""
    name = sch.get(block).name_hint
    loops = sch.get_loops(block)
    kinds = _loop_kinds(sch, block, loops)
    if not kinds or "S" not in kinds:
        return f"{name}: default"
    first_r = kinds.index("R") if "R" in kinds else len(kinds)
    if "S" in kinds[first_r:]:
        return f"{name}: default (spatial loop inside a reduction)"
    spatial, reduction = list(loops[:first_r]), list(loops[first_r:])
    extents = [int(sch.get(l).extent) for l in spatial]
    total = red_work = 1
    for e in extents:
        total *= e
    for l in reduction:
        red_work *= int(sch.get(l).extent)
    if total == 1:
        return f"{name}: default (one output)"
    store = sch.get(block).body
    bits = tvm.DataType(str(store.buffer.dtype)).bits if isinstance(store, tirx.BufferStore) else 32
    lanes_max = max(4, lanes32 * 32 // max(bits, 8))

    # the vector loop: the innermost spatial loop of extent > 1 (with the unit loops after it)
    j = max(i for i, e in enumerate(extents) if e > 1)
    strided = not _unit_stride(sch, block, _iter_var_of(sch, block, spatial[j]))
    lanes = 0 if strided else _widest(extents[j], lanes_max)
    first = j
    if not strided and not lanes and not reduction and extents[j] < lanes_max:
        # a short innermost loop (7 of 7x7): fuse outward until a vector width divides
        product = extents[j]
        while first > 0 and not lanes:
            first -= 1
            product *= extents[first]
            lanes = _widest(product, lanes_max)
        if not lanes:
            first = j
    plan = [name]
    if strided and reduction and not _windowed(sch, block, _iter_var_of(sch, block, spatial[j])):
        factor = next((f for f in INTERLEAVE_FACTORS if extents[j] % f == 0), 0)
        if factor:
            return _interleaved_reduction(sch, block, spatial, j, reduction, factor, total * red_work)
    if not lanes:
        # no explicit vector: the loop order stays the default one (LLVM vectorizes the innermost
        # loop where it can; a strided pooling window is faster so than with a reordered nest);
        # only the leading spatial loops run in parallel, in coarse chunks
        count, chunks = 0, 1
        while count < j and chunks < PARALLEL_MIN_CHUNKS:
            chunks *= extents[count]
            count += 1
        plan.append("default loop order" + (" (strided or non-linear access)" if strided else ""))
        if count and chunks > 1 and total * red_work >= PARALLEL_MIN_WORK:
            outer = sch.fuse(*spatial[:count]) if count > 1 else spatial[0]
            sch.parallel(outer)
            plan.append(f"parallel over {chunks}")
        return " ".join(plan)
    inner = sch.fuse(*spatial[first:]) if len(spatial) - first > 1 else spatial[first]
    unroll = None
    vec_outer, vec = sch.split(inner, [None, lanes])
    outer_loops = spatial[:first] + [vec_outer]
    if reduction:
        # independent vector accumulators: several vectors of outputs per reduction step
        extent = int(sch.get(vec_outer).extent)
        factor = next((f for f in UNROLL_FACTORS if extent % f == 0), 1)
        if factor > 1:
            outer_loops[-1], unroll = sch.split(vec_outer, [None, factor])
    outer = sch.fuse(*outer_loops) if len(outer_loops) > 1 else outer_loops[0]
    write_back = None
    if reduction:
        sch.reorder(*([outer] + reduction + ([unroll] if unroll is not None else []) + [vec]))
        plan.append(f"reduction over {len(reduction)} loop(s) kept in order inside")
        # accumulate in registers (a local buffer of unroll x lanes), written back once
        write_back = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(write_back, outer)
    sch.vectorize(vec)
    plan.append(f"{lanes} lanes" + (f" x {int(sch.get(unroll).extent)} accumulators" if unroll is not None else ""))
    if unroll is not None:
        sch.unroll(unroll)
    if total * red_work >= PARALLEL_MIN_WORK and int(sch.get(outer).extent) > 1:
        sch.parallel(outer)
        plan.append("parallel")
    if reduction:
        # the init as its own loop before the reduction (after the loop kinds are set: without
        # its init the block is no longer a reduction block to vectorize or parallelize)
        init = sch.decompose_reduction(block, reduction[0])
        sch.vectorize(sch.get_loops(init)[-1])
        wb_loops = sch.get_loops(write_back)
        if len(wb_loops) > 1:
            sch.vectorize(sch.fuse(*wb_loops[1:]) if len(wb_loops) > 2 else wb_loops[-1])
    return " ".join(plan)


def _interleaved_reduction(sch, block, spatial, j, reduction, factor: int, work: int) -> str:
    """A reduction whose input is strided along its innermost output loop (LayerNorm's sum over
    the hidden axis of each row): ``factor`` outputs (rows) accumulate side by side, in registers,
    each over the reduction loops in their order -- independent add chains instead of one
    latency-bound chain per output, the same sums. The leading spatial loops run in parallel where
    the kernel does enough work."""
    name = sch.get(block).name_hint
    rows_outer, rows = sch.split(spatial[j], [None, factor])
    outer_loops = list(spatial[:j]) + [rows_outer] + list(spatial[j + 1 :])
    sch.reorder(*(outer_loops + list(reduction) + [rows]))
    outer = sch.fuse(*outer_loops) if len(outer_loops) > 1 else outer_loops[0]
    write_back = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(write_back, outer)
    sch.unroll(rows)
    plan = [name, f"reduction over {len(reduction)} loop(s) kept in order inside, {factor} outputs interleaved"]
    if work >= PARALLEL_MIN_WORK and int(sch.get(outer).extent) > 1:
        sch.parallel(outer)
        plan.append("parallel")
    init = sch.decompose_reduction(block, reduction[0])
    sch.unroll(sch.get_loops(init)[-1])
    return " ".join(plan)


def schedule_func(func: tirx.PrimFunc, lanes32: int):
    """``(scheduled PrimFunc, plan)``, or ``(None, reason)`` for a function left as it is."""
    sch = s_tir.Schedule(func)
    root = sch.get_sblock("root")
    if not sch.get_child_blocks(root):
        return None, "no blocks"
    inlined = _inline_intermediates(sch)
    plans = []
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get_child_blocks(block):
            plans.append(f"{sch.get(block).name_hint}: default (nested blocks)")
            continue
        plans.append(_schedule_nest(sch, block, lanes32))
    plan = "float: " + "; ".join(plans) + (f" ({inlined} inlined)" if inlined else "")
    return sch.mod["main"], plan
