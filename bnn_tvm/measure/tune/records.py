"""Database bookkeeping: stored records per task and the untuned times."""

from __future__ import annotations

import json
import os

from ...atomic_files import atomic_write
from bnn_tvm.schedules.tuning_files import UNTUNED_FILE

from .measurer import measure_funcs, untuned_func
from .tasks import Task


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
