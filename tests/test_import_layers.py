"""The project's import graph: layers that hold, and no cycles.

Built with ``ast`` from the source (nothing is imported), top-level and function-local imports
both: an import inside a function is still a dependency, only a later one. An edge goes to the
module named (``from pkg import name`` to ``pkg.name`` when that is a module, else to ``pkg``);
the implicit import of a package's ``__init__`` by its submodules is no edge, and neither is
``importlib.import_module`` (``schedules.family_module`` loads the target families by name).

Layers of ``relay_passes``: ``common`` (the rule machinery) and ``conventions`` at the bottom,
``analysis`` (what the passes read from the IR) and ``kernels`` (what several passes emit) above
them, then the pass modules (one pass each, named as the file), then ``pipeline``, which alone
imports passes.
"""

from __future__ import annotations

import ast
import os
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("bnn_tvm", "relay_passes", "schedules", "targets")
# the pipeline's stages: folders of the repository, installed as bnn_tvm.relay_passes etc.
STAGES = ("relay_passes", "schedules", "targets")


def short(name: str) -> str:
    """An imported name as this graph names modules: ``bnn_tvm.schedules.cpu`` is ``schedules.cpu``."""
    head, _, rest = name.partition(".")
    return rest if head == "bnn_tvm" and rest.split(".")[0] in STAGES else name
# relay_passes modules that are no pass: the rule machinery and the layers around the passes
PASS_LAYERS = ("relay_passes", "relay_passes.common", "relay_passes.conventions", "relay_passes.kernels",
               "relay_passes.pipeline")


def project_modules() -> dict[str, str]:
    """``{dotted module name: path}`` of every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for folder, dirs, files in os.walk(os.path.join(ROOT, package)):
            dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
            if "__init__.py" not in files:
                continue
            prefix = os.path.relpath(folder, ROOT).replace(os.sep, ".")
            for name in files:
                if name.endswith(".py"):
                    module = prefix if name == "__init__.py" else f"{prefix}.{name[:-3]}"
                    found[module] = os.path.join(folder, name)
    return found


def imports_of(module: str, path: str, modules) -> list[tuple[list[str], bool]]:
    """``(imported project modules, function-local?)`` for each import statement of ``module``
    (the list is empty for an import of anything else: TVM, numpy, the standard library)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = []

    def visit(node, local: bool):
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                targets = []
                for alias in child.names:
                    name = short(alias.name)
                    while name and name not in modules:
                        name = name.rpartition(".")[0]
                    targets += [name] if name else []
                found.append((targets, local))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - (child.level - 1)]
                    base = ".".join(parts + ([child.module] if child.module else []))
                targets = []
                base = short(base)
                for alias in child.names:
                    target = short(f"{base}.{alias.name}")
                    targets += [target] if target in modules else [base] if base in modules else []
                found.append((targets, local))
            visit(child, inner)

    visit(tree, False)
    return found


def import_graph():
    """``(edges {module: {imported}}, function-local import statements {module: (of project
    modules, of anything)})``."""
    modules = project_modules()
    edges, local = defaultdict(set), {}
    for module, path in modules.items():
        edges[module]
        statements = imports_of(module, path, modules)
        for targets, _ in statements:
            edges[module].update(t for t in targets if t != module)
        local[module] = (sum(bool(t) and is_local for t, is_local in statements),
                         sum(is_local for _, is_local in statements))
    return dict(edges), local


def cycles(edges: dict, within: tuple[str, ...] = PACKAGES) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), among the modules of
    the packages ``within``."""
    inside = lambda m: m.split(".")[0] in within  # noqa: E731
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if not inside(w):
                continue
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if inside(v) and v not in index:
            connect(v)
    return out


def is_pass_module(module: str) -> bool:
    return module.startswith("relay_passes.") and module not in PASS_LAYERS and not module.startswith(
        "relay_passes.analysis")


def test_no_pass_imports_another_pass():
    edges, _ = import_graph()
    wrong = {m: sorted(t for t in targets if is_pass_module(t)) for m, targets in edges.items() if is_pass_module(m)}
    assert not {m: t for m, t in wrong.items() if t}


def test_layers_below_the_passes_import_no_pass():
    edges, _ = import_graph()
    below = [m for m in edges if m.startswith("relay_passes.") and not is_pass_module(m) and m != "relay_passes.pipeline"]
    wrong = {m: sorted(t for t in edges[m] if is_pass_module(t) or t == "relay_passes.pipeline") for m in below}
    assert not {m: t for m, t in wrong.items() if t}


def test_analysis_imports_only_analysis_and_the_rule_machinery():
    edges, _ = import_graph()
    allowed = ("relay_passes.analysis", "relay_passes.common", "relay_passes.conventions")
    wrong = {m: sorted(t for t in targets if t.split(".")[0] in PACKAGES and not t.startswith(allowed)
                       and t != "schedules.bitserial")
             for m, targets in edges.items() if m.startswith("relay_passes.analysis")}
    assert not {m: t for m, t in wrong.items() if t}


def test_stages_are_imported_under_the_bnn_tvm_namespace():
    """Installed, the stages exist only as ``bnn_tvm.relay_passes`` etc.: an import by the
    folder's own name works in a checkout and fails for every user (no top-level ``schedules``
    or ``targets`` package, which would collide with other projects', is installed)."""
    wrong = []
    for folder in ("bnn_tvm", *STAGES, "tests", "tools"):
        for dirpath, dirs, files in os.walk(os.path.join(ROOT, folder)):
            dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
            for name in (f for f in files if f.endswith(".py")):
                path = os.path.join(dirpath, name)
                for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
                    names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                        [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                    wrong += [f"{os.path.relpath(path, ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in STAGES]
    assert not wrong, wrong


def test_project_has_no_import_cycles():
    """No module imports, even inside a function, one that imports it back: every module can
    be imported first, and moving an import to the top of its module is always safe."""
    edges, _ = import_graph()
    assert cycles(edges) == []


# The only modules that import project modules inside functions, and why: each keeps a heavy
# package (tvm, torch, onnx, onnxruntime) out of CLI start-up or out of a command that does not
# need it. Everywhere else a project import sits at the top of its module (the graph is acyclic,
# so that is always possible); a module that already imports tvm, torch or onnx at top level
# gains nothing from a lazy one.
LAZY_PROJECT_IMPORTS = {
    # the CLI layer: every command module is imported at start-up to build the parser
    "bnn_tvm.commands.bench": "CLI start-up: the bench modules pull tvm, torch and onnx",
    "bnn_tvm.commands.compile": "CLI start-up: the compiler pulls tvm",
    "bnn_tvm.commands.export": "CLI start-up: training and export pull torch",
    "bnn_tvm.commands.inspect": "CLI start-up: inspection pulls tvm",
    "bnn_tvm.commands.run": "CLI start-up: the runtime pulls tvm and onnx",
    "bnn_tvm.commands.summary": "CLI start-up: the summary pulls onnx and torch for some models",
    "bnn_tvm.commands.train": "CLI start-up: training pulls torch",
    "bnn_tvm.commands.tune": "CLI start-up: the tuner's search and comparison pull tvm and onnx",
    "bnn_tvm.commands.verify": "CLI start-up: verify pulls tvm, onnx and onnxruntime; training data pulls torch",
    # imported by the CLI at start-up
    "bnn_tvm.frontend.export": "CLI start-up (commands.compile, inspect): training's models load only to export one",
    "bnn_tvm.measure.tune.measurer": "CLI start-up (commands.tune): schedules.tuning pulls tvm",
    "bnn_tvm.measure.tune.records": "CLI start-up (commands.tune): schedules.tuning pulls tvm",
    "bnn_tvm.measure.tune.search": "CLI start-up (commands.tune): the compiler and schedules.tuning pull tvm",
    "bnn_tvm.measure.tune.tasks": "CLI start-up (commands.tune): schedules pull tvm",
    "relay_passes": "CLI start-up (conventions): the passes pull tvm",
    "schedules": "CLI start-up (tuning_files): float_ops and the pass pipeline pull tvm",
    "schedules.calls": "CLI start-up (schedules): float_erf pulls tvm",
    # light modules of commands that need tvm, torch or onnx only on some paths
    "bnn_tvm.devices.remote": "bench --rpc on a TVM module: onnx_import pulls onnx only for ONNX Runtime's run",
    "bnn_tvm.measure.bench.engines": "bench: the compiler and runtime pull tvm only for the engines that compile",
    "bnn_tvm.measure.bench.limit": "bench: the popcount peak's kernel pulls tvm only when it is measured",
    "bnn_tvm.measure.bench.run": "bench: the runtime and ONNX Runtime's reference load only where used",
    "bnn_tvm.measure.bench.workload": "bench: torch and the compiler load only for the workload asked for",
    "bnn_tvm.measure.summary": "summary: torch and onnx load only for the kind of model summarised",
    "bnn_tvm.measure.tune.compare": "tune --compare: the compiler pulls tvm only when a model is compiled",
    "bnn_tvm.measure.tuning_db": "database checks without tvm; schedules.tuning pulls it to rebuild workloads",
    "targets.kernel_check": "target checks without tvm; the compiler and runtime load to replay a kernel",
}


def test_function_local_project_imports_only_where_allowed():
    """A project import inside a function is a choice made for start-up time, in the modules
    listed (each with its reason); the list names no module that no longer needs it."""
    _, local = import_graph()
    lazy = {module for module, (ours, _) in local.items() if ours}
    assert sorted(lazy - set(LAZY_PROJECT_IMPORTS)) == []  # move these imports to the top
    assert sorted(set(LAZY_PROJECT_IMPORTS) - lazy) == []  # stale entries


if __name__ == "__main__":  # the graph's cycles and function-local imports, for a report
    edges, local = import_graph()
    for component in cycles(edges):
        print("cycle:", " ".join(component))
    print("function-local import statements: of project modules / of anything (TVM, numpy, ...)")
    for module, (ours, total) in sorted(local.items(), key=lambda kv: (-kv[1][1], kv[0])):
        if total:
            print(f"{ours:4d} {total:4d}  {module}")
    print(f"{sum(o for o, _ in local.values()):4d} {sum(t for _, t in local.values()):4d}  in all")
