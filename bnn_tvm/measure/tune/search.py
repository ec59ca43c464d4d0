"""The search: MetaSchedule's evolutionary search over the tasks, resumable."""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from ...devices.endpoint import Endpoint
from ...errors import BnnError
from .measurer import board_label, light_tensor_intrinsics, make_measurer
from bnn_tvm.schedules.tuning_files import FAILED_RUN_SECS

from .records import measure_untuned, save_json, stored_records
from .report import REPORT_FILE, build_report
from .tasks import Task, extract_tasks
from bnn_tvm import targets


DEFAULT_TRIALS = 64
DEFAULT_TIMEOUT_S = 120  # builder and runner, per candidate
DEFAULT_POPULATION = 64
DEFAULT_TRIALS_PER_ITER = 8
LOG_FILE = os.path.join("logs", "tune.log")


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
    endpoint: Endpoint = Endpoint(),
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
    ``minutes`` of searching have passed), measuring on the board at ``endpoint`` (default: here)."""
    from ...compilation.compiler import lower_onnx
    from bnn_tvm.schedules.tuning import open_database, workload

    from .. import tuning_db

    if trials < 0:
        raise BnnError(f"--trials {trials}: must be >= 0")
    spec = targets.get(target)
    light_tensor_intrinsics(spec.family)
    if spec.family not in ("x86", "arm"):
        raise BnnError(f"--target {spec.name}: tuning supports CPU targets (x86, arm); {spec.family} kernels keep their hand-written schedules")
    where = board_label(spec, endpoint)
    from ...frontend.export import resolve_model

    path = resolve_model(model)
    tuning_db.check_folder(db_dir, writable=True)
    setup_logging(db_dir)
    measurer = functools.lru_cache(maxsize=1)(lambda: make_measurer(spec, timeout, endpoint))
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
