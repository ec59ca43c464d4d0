"""Autotuning with MetaSchedule: binary kernels in their binary-aware space, float kernels in
MetaSchedule's default one, an XGBoost cost model, and a JSON database that survives being killed.

Tasks: every distinct PrimFunc of the model as it will be compiled (``schedules.tuning.
prepare_module``): the binary kernels (``bnn.op``) and the float operators ``LegalizeOps``
makes. Identical kernels (same structure) are one task weighted by how often the model calls it.

Search: ``schedules.tuning.space_generator`` per task, MetaSchedule's evolutionary search with a
small population (2 cores), the gradient task scheduler (weights = call counts), the XGBoost
cost model, a builder timeout raised above MetaSchedule's 30 s (bitserial builds take longer on
a loaded machine). Builds for another machine are cross-compiled (the target's cross compiler)
and measured over TVM RPC (``--tracker``/``--key`` or ``--rpc``).

Database and resume: ``DIR/database_workload.json`` + ``DIR/database_tuning_record.json``
(MetaSchedule's ``JSONDatabase``, one line appended per measured candidate). ``--trials N`` is the
number of records the database should hold for this model and target: a run interrupted after
``k`` records does the remaining ``N - k`` when started again (and, with the same ``N`` after
it finished, nothing). The evolutionary search starts from the best stored records, and the
cost model is trained on the stored ones before the first new batch. A truncated last line of
a killed run is dropped with a warning.

Report: ``DIR/untuned.json`` holds each task's untuned time (hand-written schedule for binary
kernels, TVM's default lowering for float ones), measured once with the same builder and runner;
``DIR/report.json`` per task: untuned time, best tuned time, trials; ``--plot`` draws it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import BnnError
from ..atomic_files import atomic_write

DEFAULT_TRIALS = 64
DEFAULT_TIMEOUT_S = 120  # builder and runner, per candidate
DEFAULT_POPULATION = 64
DEFAULT_TRIALS_PER_ITER = 8
REPEATS = 9  # timed calls per candidate (each after a cache flush)
REPORT_FILE = "report.json"
UNTUNED_FILE = "untuned.json"  # schedules.tuning.UNTUNED_FILE (compile --db reads it)
FAILED_RUN_SECS = 1e9  # schedules.tuning.FAILED_RUN_SECS: MetaSchedule stores 1e10 s for a failed candidate
LOG_FILE = os.path.join("logs", "tune.log")


# --------------------------------------------------------------------------------------------
# Model and tasks


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
        from bnn_tvm.schedules.tuning import SPACES

        return "binary-aware" if self.op in SPACES else "MetaSchedule default"


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


# --------------------------------------------------------------------------------------------
# Builder and runner


def build_kernel(mod, target, _params):
    """MetaSchedule ``f_build`` without its ``import tvm.s_tir.tensor_intrin``: that registers every
    target's intrinsics (CUDA's mostly) and takes over a minute per builder process here, so
    MetaSchedule's 30 s build timeout killed most builds. The candidates' IR holds its own
    tensorized code; nothing needs to be registered to compile it."""
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm.compile(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def light_tensor_intrinsics(family: str) -> None:
    """Register only the tensor intrinsics MetaSchedule's CPU rules for ``family`` use.

    ``TuneContext`` imports ``tvm.s_tir.tensor_intrin``, whose package import registers those of
    every target (70 s here, CUDA's mostly). Installing the package as an empty namespace first
    and importing only ``x86`` (under 1 s) or ``arm_cpu`` (4 s) gives the default x86/ARM
    schedule rules (VNNI, SDOT) what they look up."""
    import importlib
    import importlib.util
    import sys
    import types

    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        found = importlib.util.find_spec(name)
        package = types.ModuleType(name, "TVM's tensor intrinsics, only the submodules bnn_tvm.measure.tune imported")
        package.__path__ = list(found.submodule_search_locations)
        package.__package__ = name
        package.__spec__ = found
        sys.modules[name] = package
    importlib.import_module(f"{name}.{'arm_cpu' if family == 'arm' else 'x86'}")


def export_with(compiler: str | None, artifacts: str, module) -> str:
    """MetaSchedule ``f_export``: the built kernel as a shared library in a new folder under
    ``artifacts`` (removed when the run ends), cross-compiled when the target has a cross
    compiler. Runs in the builder's worker processes."""
    import tempfile

    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(prefix="kernel_", dir=artifacts), "kernel.so")
    module.export_library(path, fcompile=cc.cross_compiler(compiler) if compiler else None)
    return path


def host_arrays(args_info, seed: int = 0) -> list[np.ndarray]:
    """Inputs for timing a kernel: random floats and words; signed integers 0, because they are
    thresholds, corrections or *indices* (compact correction classes, table offsets): the
    default random fill puts float bit patterns there, and an index like that reads out of bounds."""
    rng = np.random.default_rng(seed)
    arrays = []
    for _, dtype, shape in args_info:
        dtype = str(dtype)
        if dtype.startswith("float"):
            arrays.append(rng.standard_normal(shape).astype(dtype))
        elif dtype.startswith("uint"):
            arrays.append(rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype))
        else:
            arrays.append(np.zeros(shape, dtype))
    return arrays


def alloc_local(device, args_info, alloc_repeat: int):
    """``LocalRunner`` ``f_alloc_argument`` with :func:`host_arrays`."""
    import tvm

    return [[tvm.runtime.tensor(a, device) for a in host_arrays(args_info, seed)] for seed in range(alloc_repeat)]


def alloc_remote(session, device, args_info, alloc_repeat: int):
    """``RPCRunner`` ``f_alloc_argument`` with :func:`host_arrays` (copied to the board)."""
    import tvm

    return [[tvm.runtime.tensor(a, device) for a in host_arrays(args_info, seed)] for seed in range(alloc_repeat)]


def connect_direct(host: str, port: int, timeout: float, rpc_config):
    """``RPCRunner`` ``f_create_session`` for ``--rpc HOST:PORT`` (a server without a tracker)."""
    from tvm import rpc

    return rpc.connect(host, port, session_timeout=timeout)


@dataclass
class Measurer:
    builder: object
    runner: object
    where: str  # "this machine" | "key K of tracker H:P" | "RPC server H:P"
    artifacts: str  # folder of the built candidates' libraries, removed by ``close``

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.artifacts, ignore_errors=True)


def board_label(spec, rpc: str | None, tracker: str | None, key: str | None) -> str:
    """Where candidates run; fails fast (clear error) when that board cannot be reached."""
    from ..devices.remote import _check_reachable, _check_tracker_key

    if rpc is None and tracker is None:
        if not spec.is_host:
            raise BnnError(
                f"target {spec.name} runs on another machine: give --tracker HOST:PORT --key KEY "
                f"(or --rpc HOST:PORT) of a board (`python -m bnn_tvm board start --target {spec.name}`)"
            )
        return "this machine"
    if rpc is not None and tracker is not None:
        raise BnnError("--rpc and --tracker: give one of them")
    if tracker is not None:
        _check_tracker_key(tracker, key or spec.name)
        return f"key {key or spec.name!r} of tracker {tracker}"
    _check_reachable(rpc)
    return f"RPC server {rpc}"


def make_measurer(spec, timeout: float, rpc: str | None = None, tracker: str | None = None,
                  key: str | None = None) -> Measurer:
    import tempfile

    from tvm.s_tir import meta_schedule as ms

    from ..devices.tracker import parse_address

    where = board_label(spec, rpc, tracker, key)
    workers = max(1, min(2, os.cpu_count() or 1))
    artifacts = tempfile.mkdtemp(prefix="bnn_tune_")
    builder = ms.builder.LocalBuilder(
        max_workers=workers, timeout_sec=timeout, f_build=build_kernel,
        f_export=functools.partial(export_with, spec.cross_compiler, artifacts),
    )
    # Cold caches, one call per sample: inside the model a kernel runs once per inference after
    # other layers evicted its weights, and with warm caches and back-to-back calls the
    # measurements favoured schedules that were slower in the model.
    evaluator = ms.runner.EvaluatorConfig(number=1, repeat=REPEATS, min_repeat_ms=0, enable_cpu_cache_flush=True)
    if rpc is None and tracker is None:
        runner = ms.runner.LocalRunner(timeout_sec=timeout, evaluator_config=evaluator, f_alloc_argument=alloc_local)
    elif tracker is not None:
        host, port = parse_address(tracker, "--tracker")
        config = ms.runner.RPCConfig(host, port, key or spec.name, session_priority=1, session_timeout_sec=int(timeout))
        runner = ms.runner.RPCRunner(config, evaluator, f_alloc_argument=alloc_remote, max_workers=1)
    else:
        host, port = parse_address(rpc, "--rpc")
        config = ms.runner.RPCConfig(host, port, "direct", session_timeout_sec=int(timeout))
        runner = ms.runner.RPCRunner(
            config, evaluator, f_alloc_argument=alloc_remote, max_workers=1,
            f_create_session=functools.partial(connect_direct, host, port, timeout),
        )
    return Measurer(builder, runner, where, artifacts)


def measure_funcs(funcs: list, spec, measurer: Measurer) -> list[tuple[float | None, str | None]]:
    """``(mean seconds or None, error)`` of each PrimFunc, built and run like a tuning candidate."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    from bnn_tvm.schedules.tuning import workload

    from bnn_tvm.schedules.tuning import tuning_target

    target = tuning_target(spec)
    mods = [workload(f) for f in funcs]
    built = measurer.builder.build([ms.builder.BuilderInput(m, target) for m in mods])
    results: list[tuple[float | None, str | None]] = [(None, b.error_msg) for b in built]
    inputs, where = [], []
    for i, (mod, b) in enumerate(zip(mods, built)):
        if b.error_msg is None:
            args = ArgInfo.from_entry_func(mod, remove_preproc=True)
            inputs.append(ms.runner.RunnerInput(b.artifact_path, spec.device, args))
            where.append(i)
    for i, future in zip(where, measurer.runner.run(inputs)):
        result = future.result()
        if result.error_msg is None:
            results[i] = (float(np.mean([float(s) for s in result.run_secs])), None)
        else:
            results[i] = (None, result.error_msg)
    return results


def untuned_func(task: Task, spec):
    """The kernel as compiled without a database: the hand-written schedule of a binary kernel,
    the default lowering of a float one."""
    from bnn_tvm import schedules
    from bnn_tvm.schedules.tuning import workload

    if task.op is None:
        return task.func
    module = schedules.family_module(spec.family)
    fresh = workload(task.func)["main"].without_attr("global_symbol")  # the hand schedule may edit in place
    return module.schedule(fresh, task.op, spec.tvm_target()).func if module is not None else task.func


# --------------------------------------------------------------------------------------------
# Database bookkeeping


def target_label(spec) -> str:
    return target_label_of(spec.tvm_target())


def target_label_of(target) -> str:
    from bnn_tvm.schedules.tuning import target_label as label

    return label(target)


def stored_records(database, tasks: list[Task], spec) -> dict[str, list]:
    """The database's records of each task (by key) for this target, best first."""
    import tvm_ffi

    label = target_label(spec)
    by_hash: dict[int, list] = {}
    for record in database.get_all_tuning_records():
        if target_label_of(record.target) != label:
            continue
        by_hash.setdefault(tvm_ffi.structural_hash(record.workload.mod), []).append(record)
    found = {}
    for task in tasks:
        from bnn_tvm.schedules.tuning import workload

        records = by_hash.get(tvm_ffi.structural_hash(workload(task.func)), [])
        found[task.key] = sorted(records, key=record_seconds)
    return found


def record_seconds(record) -> float:
    from bnn_tvm.schedules.tuning import record_seconds as seconds

    return seconds(record)


def load_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def save_json(path: str, value) -> None:
    atomic_write(path, lambda tmp: open(tmp, "w").write(json.dumps(value, indent=2) + "\n"))


def measure_untuned(tasks: list[Task], spec, measurer, db_dir: str, progress: bool) -> dict:
    """Untuned seconds per task key (for this target), measured once and kept in the database
    folder (``measurer``: a function returning the :class:`Measurer`, called only if needed)."""
    path = os.path.join(db_dir, UNTUNED_FILE)
    stored = load_json(path)
    known = stored.setdefault(target_label(spec), {})
    missing = [t for t in tasks if t.key not in known]
    if missing:
        where = measurer().where
        if progress:
            print(f"measuring the untuned schedules of {len(missing)} task(s) on {where}", flush=True)
        results = measure_funcs([untuned_func(t, spec) for t in missing], spec, measurer())
        for task, (seconds, error) in zip(missing, results):
            if seconds is None:  # not stored: measured again next time
                print(f"warning: the untuned {task.name} did not build or run: {(error or '').strip()[:300]}", flush=True)
                continue
            known[task.key] = {"seconds": seconds, "name": task.name, "schedule": untuned_label(task)}
        save_json(path, stored)
    return known


def untuned_label(task: Task) -> str:
    return "hand-written" if task.op is not None else "TVM default lowering"


# --------------------------------------------------------------------------------------------
# Search


def tune_context(task: Task, spec, population: int, seed: int):
    from tvm.s_tir import meta_schedule as ms

    from bnn_tvm.schedules.tuning import space_generator, tuning_target, workload

    strategy = ms.search_strategy.EvolutionarySearch(
        population_size=population,
        init_measured_ratio=0.25,
        init_min_unmeasured=max(8, population // 4),
        genetic_num_iters=3,
        max_fail_count=10,
        eps_greedy=0.1,
    )
    return ms.TuneContext(
        mod=workload(task.func),
        target=tuning_target(spec),
        space_generator=space_generator(task.func, task.op, spec),
        search_strategy=strategy,
        task_name=task.name,
        rand_state=seed,
        num_threads=max(1, os.cpu_count() or 1),
        logger=logging.getLogger("bnn_tvm.measure.tune.ms"),
    )


def cost_model():
    from tvm.s_tir import meta_schedule as ms

    # Few measurements in a short run: stop predicting at random after 16 of them, not 100.
    return ms.cost_model.XGBModel(num_warmup_samples=16, num_tuning_cores=max(1, os.cpu_count() or 1),
                                  tree_method="auto", verbose_eval=0)


def warm_cost_model(model, contexts: list, tasks: list[Task], records: dict) -> int:
    """Train the cost model on the stored records (a resumed run), so its first batch is not random."""
    from tvm.s_tir import meta_schedule as ms

    from bnn_tvm.schedules.tuning import register_intrinsics

    used = 0
    for context, task in zip(contexts, tasks):
        stored = [r for r in records.get(task.key, []) if r.run_secs][:256]
        candidates, results = [], []
        for record in stored:
            register_intrinsics(record.trace)
            try:
                candidates.append(record.as_measure_candidate())
            except Exception:  # noqa: BLE001 (a record from an older space that no longer replays)
                continue
            results.append(ms.runner.RunnerResult(run_secs=list(record.run_secs), error_msg=None))
        if candidates:
            model.update(context, candidates, results)
            used += len(candidates)
    return used


class TimeUp(Exception):
    """Raised by the progress callback when the run's time limit is reached."""


def progress_callback(tasks: list[Task], untuned: dict, bar, deadline: float | None = None):
    """A measure callback: the bar advances per measured candidate and shows the best time of the
    task just measured against its untuned time; past ``deadline`` (monotonic) it ends the run
    (the batch just measured is in the database already: the default callbacks run first)."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.ir.utils import derived_object

    best: dict = {}  # task id -> best seconds; "time_up" once the deadline passed

    @derived_object
    class Progress(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            for result in runner_results:
                if result.error_msg is None and result.run_secs:
                    seconds = float(np.mean([float(s) for s in result.run_secs]))
                    if seconds < FAILED_RUN_SECS:
                        best[task_id] = min(best.get(task_id, seconds), seconds)
            task = tasks[task_id]
            base = (untuned.get(task.key) or {}).get("seconds")
            text = f"{task.name}: best {best[task_id] * 1e3:.3f} ms" if task_id in best else f"{task.name}: no valid candidate yet"
            if base and task_id in best:
                text += f" (untuned {base * 1e3:.3f}, x{base / best[task_id]:.2f})"
            bar.update(len(measure_candidates))
            bar.set_postfix_str(text)
            if deadline is not None and time.monotonic() > deadline:
                best["time_up"] = True
                raise TimeUp("the time limit is reached")

    return Progress(), best


def setup_logging(db_dir: str) -> None:
    """MetaSchedule's and XGBoost's chatter goes to ``DIR/logs/tune.log``, not the terminal."""
    path = os.path.join(db_dir, LOG_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in ("bnn_tvm.measure.tune.ms", "tvm.s_tir.meta_schedule"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False


@dataclass
class TuneResult:
    report: dict
    report_path: str


def tune(
    model: str | None = None,
    target: str = "x86",
    trials: int = DEFAULT_TRIALS,
    db_dir: str = "tuning_db",
    rpc: str | None = None,
    tracker: str | None = None,
    key: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    batch: int | None = None,
    kinds=("binary", "float"),
    population: int = DEFAULT_POPULATION,
    trials_per_iter: int = DEFAULT_TRIALS_PER_ITER,
    seed: int = 1,
    progress: bool = True,
    minutes: float | None = None,
) -> TuneResult:
    """Tune ``model`` for ``target`` until the database holds ``trials`` records of its tasks (or
    ``minutes`` of searching have passed)."""
    from bnn_tvm import targets

    from ..compilation.compiler import lower_onnx
    from bnn_tvm.schedules.tuning import open_database, workload

    from . import tuning_db

    if trials < 0:
        raise BnnError(f"--trials {trials}: must be >= 0")
    spec = targets.get(target)
    light_tensor_intrinsics(spec.family)
    if spec.family not in ("x86", "arm"):
        raise BnnError(f"--target {spec.name}: tuning supports CPU targets (x86, arm); {spec.family} kernels keep their hand-written schedules")
    where = board_label(spec, rpc, tracker, key)
    from ..frontend.export import resolve_model

    path = resolve_model(model)
    tuning_db.check_folder(db_dir, writable=True)
    setup_logging(db_dir)
    measurer = functools.lru_cache(maxsize=1)(lambda: make_measurer(spec, timeout, rpc, tracker, key))
    lowered = lower_onnx(path, batch, target=spec.name)
    tasks = extract_tasks(lowered.mod, spec, kinds)
    if not tasks:
        raise BnnError(f"{path}: no {' or '.join(kinds)} kernels to tune")
    lock = lock_database(db_dir)  # held until this process ends
    tuning_db.repair(db_dir, [workload(t.func) for t in tasks])
    database = open_database(db_dir, writable=True)
    records = stored_records(database, tasks, spec)
    stored = sum(len(r) for r in records.values())
    remaining = max(0, trials - stored)
    try:
        untuned = measure_untuned(tasks, spec, measurer, db_dir, progress)
        if progress:
            print(f"{len(tasks)} task(s) ({sum(t.kind == 'binary' for t in tasks)} binary) of {os.path.basename(path)} "
                  f"for {spec.name}; {stored} record(s) stored in {db_dir}, {remaining} trial(s) to go "
                  f"(--trials {trials} is the total)", flush=True)
        started = time.monotonic()
        if remaining:
            run_search(tasks, spec, measurer(), database, records, untuned, db_dir, remaining, population,
                       trials_per_iter, seed, progress, minutes)
    finally:
        if measurer.cache_info().currsize:
            measurer().close()
    records = stored_records(open_database(db_dir, writable=False), tasks, spec)
    added = sum(len(r) for r in records.values()) - stored  # fewer than asked when --minutes ran out
    report = build_report(path, spec, db_dir, tasks, records, untuned, added, time.monotonic() - started, where)
    report_path = os.path.join(db_dir, REPORT_FILE)
    save_json(report_path, report)
    lock.close()
    return TuneResult(report, report_path)


def lock_database(db_dir: str):
    """An exclusive lock on the database folder: two tuning runs appending to the same files
    would interleave their lines. Released when the returned file is closed or the process ends."""
    import fcntl

    os.makedirs(db_dir, exist_ok=True)
    handle = open(os.path.join(db_dir, ".lock"), "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise BnnError(f"--db {db_dir}: another tuning run is using this database") from None
    return handle


def run_search(tasks, spec, measurer, database, records, untuned, db_dir, remaining, population,
               trials_per_iter, seed, progress, minutes: float | None = None) -> None:
    from tqdm import tqdm
    from tvm.s_tir import meta_schedule as ms

    contexts = [tune_context(t, spec, population, seed + i) for i, t in enumerate(tasks)]
    model = cost_model()
    warm_cost_model(model, contexts, tasks, records)
    deadline = None if minutes is None else time.monotonic() + 60 * minutes
    with tqdm(total=remaining, desc="tuning", unit="trial", disable=not progress, dynamic_ncols=True) as bar:
        callback, state = progress_callback(tasks, untuned, bar, deadline)
        try:
            search(ms, contexts, tasks, measurer, database, model, callback, db_dir, remaining, trials_per_iter)
        except Exception:  # noqa: BLE001 (TimeUp arrives as the RuntimeError the FFI turned it into)
            if not state.get("time_up"):
                raise
            bar.write(f"time limit of {minutes:g} min reached; the records so far are in {db_dir}")


def search(ms, contexts, tasks, measurer, database, model, callback, db_dir, remaining, trials_per_iter) -> None:
    ms.tune_tasks(
        tasks=contexts,
        task_weights=[float(t.calls) for t in tasks],
        work_dir=db_dir,
        max_trials_global=remaining,
        # small batches when the budget is small, so that every task gets measured
        num_trials_per_iter=max(2, min(trials_per_iter, remaining // len(tasks))),
        builder=measurer.builder,
        runner=measurer.runner,
        database=database,
        cost_model=model,
        measure_callbacks=list(ms.measure_callback.MeasureCallback.create("default")) + [callback],
        task_scheduler=ms.task_scheduler.GradientBased(),
    )


# --------------------------------------------------------------------------------------------
# Report


def build_report(path, spec, db_dir, tasks, records, untuned, trials_run, seconds, where: str) -> dict:
    rows = []
    for task in tasks:
        base = (untuned.get(task.key) or {}).get("seconds")
        valid = [r for r in records.get(task.key, []) if record_seconds(r) < FAILED_RUN_SECS]
        best = record_seconds(valid[0]) if valid else None
        rows.append({
            "name": task.name, "kind": task.kind, "op": task.op, "space": task.space, "calls": task.calls,
            "untuned_schedule": untuned_label(task),
            "untuned_ms": None if base is None else base * 1e3,
            "tuned_ms": None if best is None else best * 1e3,
            "speedup": None if not (base and best) else base / best,
            "trials": len(records.get(task.key, [])),
            "failed_trials": len(records.get(task.key, [])) - len(valid),
            "key": task.key,
        })
    return {
        "model": os.path.basename(path),
        "target": spec.name,
        "measured_on": where,
        "database": os.path.abspath(db_dir),
        "trials_this_run": trials_run,
        "seconds_this_run": round(seconds, 1),
        "tasks": rows,
        "totals": {kind: totals([r for r in rows if r["kind"] == kind]) for kind in ("binary", "float")},
        "note": "times are per call; totals weight each task by its calls in the model; 'with database' "
                "uses a tuned schedule only where it beat the untuned one (what compile --db does)",
    }


def totals(rows: list[dict]) -> dict:
    measured = [r for r in rows if r["untuned_ms"] is not None]
    untuned = sum(r["calls"] * r["untuned_ms"] for r in measured)
    tuned = sum(r["calls"] * min(r["untuned_ms"], r["tuned_ms"] or float("inf")) for r in measured)
    return {"untuned_ms": untuned, "with_database_ms": tuned, "speedup": (untuned / tuned) if tuned else None,
            "tasks": len(rows)}


def report_lines(report: dict) -> list[str]:
    lines = [f"{'task':34s} {'kind':6s} {'calls':>5s} {'untuned ms':>11s} {'tuned ms':>9s} {'speedup':>8s} {'trials':>6s}"]
    for r in report["tasks"]:
        fmt = lambda v, spec=".3f": "-" if v is None else format(v, spec)  # noqa: E731
        lines.append(f"{r['name'][:34]:34s} {r['kind']:6s} {r['calls']:5d} {fmt(r['untuned_ms']):>11s} "
                     f"{fmt(r['tuned_ms']):>9s} {fmt(r['speedup'], '.2f'):>8s} {r['trials']:6d}")
    for kind, t in report["totals"].items():
        if t["tasks"]:
            lines.append(f"{kind} kernels in total: untuned {t['untuned_ms']:.3f} ms, with the database "
                         f"{t['with_database_ms']:.3f} ms per inference (x{t['speedup']:.2f})")
    return lines


def plot_report(report: dict, path: str) -> None:
    """Untuned vs tuned time per task (weighted by calls: the time the model spends there)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["tasks"] if r["untuned_ms"] is not None]
    names = [f"{r['name']} x{r['calls']}" for r in rows]
    untuned = [r["calls"] * r["untuned_ms"] for r in rows]
    tuned = [r["calls"] * (r["tuned_ms"] if r["tuned_ms"] is not None else np.nan) for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(rows) + 2), 4.5))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, untuned, 0.4, label="untuned (hand-written / TVM default)")
    ax.bar(x + 0.2, tuned, 0.4, label="tuned (best record)")
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("ms per inference (time x calls)")
    ax.set_title(f"{report['model']} on {report['target']}: tuning ({sum(r['trials'] for r in rows)} trials)")
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# The model with and without the database, in one run


def compare_model(path: str, target: str, db_dir: str, batch: int | None = None, rounds: int = 15) -> dict:
    """Compile the model without and with the database and time both, interleaved round by round:
    each binary kernel call (a VM instrument around every call; binary kernels are named
    ``bnn_*``, float convs ``bnn_float_*``) and the whole model (``time_evaluator``, no instrument). Medians over the rounds."""
    import tvm
    from tvm import relax

    from bnn_tvm import targets

    from ..compilation.compiler import compile_onnx

    if not targets.get(target).is_host:
        raise BnnError(f"--compare runs the model here; target {target} is not this machine")
    builds = {"untuned": compile_onnx(path, target, batch), "tuned": compile_onnx(path, target, batch, db=db_dir)}
    shape = builds["untuned"].metadata["input_shape"]
    data = tvm.runtime.tensor(np.random.default_rng(0).standard_normal(shape).astype("float32"), tvm.cpu())
    samples = {name: {"binary_ms": [], "model_ms": []} for name in builds}
    machines = {}
    for name, build in builds.items():
        timed, plain = (relax.VirtualMachine(build.executable, tvm.cpu()) for _ in range(2))
        spent = {"ns": 0, "start": 0}

        def instrument(func, symbol, before, ret, *args, spent=spent):
            if str(symbol).startswith("bnn_") and not str(symbol).startswith("bnn_float_"):  # binary kernels only
                if before:
                    spent["start"] = time.perf_counter_ns()
                else:
                    spent["ns"] += time.perf_counter_ns() - spent["start"]
            return 0

        timed.set_instrument(instrument)
        timed["main"](data)  # warm-up
        machines[name] = (timed, plain.time_evaluator("main", tvm.cpu(), number=10, repeat=1), spent)
    for _ in range(rounds):
        for name, (timed, model_timer, spent) in machines.items():
            spent["ns"] = 0
            timed["main"](data)
            samples[name]["binary_ms"].append(spent["ns"] / 1e6)
            samples[name]["model_ms"].append(model_timer(data).mean * 1e3)
    medians = {name: {k: float(np.median(v)) for k, v in s.items()} for name, s in samples.items()}
    return {
        "rounds": rounds,
        "untuned": medians["untuned"],
        "tuned": medians["tuned"],
        "binary_speedup": medians["untuned"]["binary_ms"] / medians["tuned"]["binary_ms"],
        "model_speedup": medians["untuned"]["model_ms"] / medians["tuned"]["model_ms"],
        "popcount_limit": binary_limit(path, target, int(shape[0]), medians["untuned"]["binary_ms"]),
    }


def binary_limit(path: str, target: str, batch: int, untuned_binary_ms: float) -> dict:
    """The model's binary MACs at the popcount limit (``bench.popcount_peak``, at the thread
    count TVM uses here): ``limit_ms``, and ``binary_speedup_at_limit``, the most any schedule of
    the popcount kernels could gain over the untuned build's binary kernels (every binary
    kernel doing nothing but its ``XOR + POPCOUNT + ADD`` at the limit)."""
    from .bench import ms_at_limit, popcount_peak
    from .summary import summarize_onnx

    threads = int(os.environ.get("TVM_NUM_THREADS", 0)) or os.cpu_count() or 1
    macs = summarize_onnx(path).macs_by_bits().get(1, 0) * batch
    peak = popcount_peak(target, threads)
    limit_ms = ms_at_limit(macs, peak)
    return {**peak, "binary_macs": macs, "limit_ms": limit_ms,
            "binary_speedup_at_limit": untuned_binary_ms / limit_ms if limit_ms else None}
