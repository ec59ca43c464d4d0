"""The model and its tasks: every distinct PrimFunc as it will be compiled, weighted by its calls."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Task:
    name: str  # the kernel's name in the model (the first one, for kernels called under several)
    kind: str  # "binary" | "float"
    op: str | None  # bnn.op of a binary kernel
    func: object = field(repr=False)  # tvm.tirx.PrimFunc
    calls: int = 1  # call sites in the model
    key: str = ""  # structural hash of the workload: identifies the task across runs

    @property
    def space(self) -> str:
        from bnn_tvm.schedules.cpu import RULES

        return "binary-aware" if self.op in RULES else "MetaSchedule default"


def call_counts(mod) -> dict[str, int]:
    """How often the Relax functions of ``mod`` call each PrimFunc (by name)."""
    import tvm
    from tvm import relax

    counts: dict[str, int] = {}
    call_tir = tvm.ir.Op.get("relax.call_tir")

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op == call_tir:
            name = expr.args[0].name_hint
            counts[name] = counts.get(name, 0) + 1

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return counts


def extract_tasks(mod, spec, kinds=("binary", "float")) -> list[Task]:
    """The tuning tasks of a Relax module after the binarization passes."""
    from bnn_tvm.schedules.float_conv import FLOAT_KERNELS
    from bnn_tvm.schedules.tuning import prepare_module, tunable_kernels, workload_key

    prepared = prepare_module(mod, spec)
    counts = call_counts(prepared)
    tasks: dict[str, Task] = {}
    for gvar, func, op in tunable_kernels(prepared):
        kind = "float" if op is None or op in FLOAT_KERNELS else "binary"
        calls = counts.get(gvar.name_hint, 0)
        if kind not in kinds or calls == 0:
            continue
        key = workload_key(func)
        if key in tasks:
            tasks[key].calls += calls
        else:
            tasks[key] = Task(gvar.name_hint, kind, op, func, calls, key)
    # binary kernels first (the gradient scheduler's first round goes in this order)
    return sorted(tasks.values(), key=lambda t: (t.kind != "binary", t.name))
