"""The tuning database folder (``--db DIR``) as the commands meet it: checked before use, and
repaired without losing anything.

MetaSchedule's ``JSONDatabase`` fails on any line it cannot read, so the lines it would fail on
are set aside first: a line that is not JSON (the truncated last line of a killed run, or damage
in the middle of a file), a record MetaSchedule cannot parse, and a record whose workload line is
missing or unreadable. Such a record's workload is rebuilt from the model being tuned where its
argument shapes match exactly one of the model's kernels. ``tune`` rewrites the folder without
what was set aside, after copying the original files into ``DIR/backup-TIMESTAMP/``; ``compile
--db`` reads a cleaned copy and leaves the folder alone. Each warning says what was found where.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field

from ..errors import BnnError
from ..atomic_files import atomic_write
from bnn_tvm.schedules.tuning_files import RECORD_FILE, UNTUNED_FILE, WORKLOAD_FILE

DATABASE_FILES = (WORKLOAD_FILE, RECORD_FILE, UNTUNED_FILE)


def check_folder(db_dir: str, writable: bool) -> None:
    """``db_dir`` is a folder whose database files are files; ``writable``: tuning can add to it."""
    if os.path.exists(db_dir) and not os.path.isdir(db_dir):
        raise BnnError(f"--db {db_dir} is a file, not a tuning database folder")
    for name in DATABASE_FILES:
        if os.path.isdir(os.path.join(db_dir, name)):
            raise BnnError(f"--db {db_dir}: {name} is a folder; the tuning database needs a file there")
    if not writable:
        if not os.path.isfile(os.path.join(db_dir, WORKLOAD_FILE)):
            raise BnnError(f"--db {db_dir}: no tuning database there ({WORKLOAD_FILE} missing); "
                           f"run `python -m bnn_tvm tune --db {db_dir}` first")
        return
    try:
        os.makedirs(db_dir, exist_ok=True)
        tempfile.TemporaryFile(dir=db_dir).close()
    except OSError as err:
        raise BnnError(f"--db {db_dir}: cannot write there ({err.strerror or err}); tuning adds its records to "
                       "that folder") from err


@dataclass
class Contents:
    """The loadable part of a database folder, and what was set aside (one sentence each)."""

    workloads: list[str] = field(default_factory=list)
    records: list[str] = field(default_factory=list)
    untuned: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def read(db_dir: str, model_workloads=()) -> Contents:
    """The folder's workload and record lines that MetaSchedule can load and its untuned times;
    ``model_workloads`` (IRModules of the model's kernels) rebuild workload lines that are gone."""
    from bnn_tvm.schedules.tuning import register_intrinsics_named_in

    contents = Contents()
    workloads = read_workloads(os.path.join(db_dir, WORKLOAD_FILE), contents.problems)
    record_path = os.path.join(db_dir, RECORD_FILE)
    lines = read_lines(record_path)
    register_intrinsics_named_in(lines)
    orphans: dict[int, list[tuple[int, list]]] = {}  # workload index -> (line number, record)
    for number, line in enumerate(lines, start=1):
        where = f"{record_path} line {number} of {len(lines)}"
        entry = parse_record_line(line, where, number == len(lines), contents.problems)
        if entry is None:
            continue
        index, record = entry
        if workloads.get(index) is None:
            orphans.setdefault(index, []).append((number, record))
        else:
            keep_record(workloads, index, record, where, contents.problems)
    restore_workloads(workloads, orphans, model_workloads, db_dir, contents.problems)
    contents.workloads, renumber = renumbered(workloads)
    contents.records = [json.dumps([renumber[i], r]) for i, r in workloads.kept_records]
    contents.untuned = read_untuned(os.path.join(db_dir, UNTUNED_FILE), contents.problems)
    return contents


class Workloads(dict):
    """Workload index -> ``(line, tvm Workload)``, None for an unreadable line; and the records
    kept so far as ``(workload index, record JSON)``."""

    def __init__(self):
        super().__init__()
        self.kept_records: list[tuple[int, list]] = []


def read_lines(path: str) -> list[str]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        return [line for line in f.read().split("\n") if line.strip()]


def read_workloads(path: str, problems: list[str]) -> Workloads:
    from tvm.s_tir import meta_schedule as ms

    workloads = Workloads()
    lines = read_lines(path)
    for index, line in enumerate(lines):
        where = f"{path} line {index + 1} of {len(lines)}"
        try:
            workloads[index] = (line, ms.database.Workload.from_json(json.loads(line)))
        except ValueError:
            workloads[index] = None
            problems.append(f"{where} is not JSON ({cut_or_damaged(index + 1 == len(lines))})")
        except Exception as err:  # noqa: BLE001 (TVM's parse errors have no common type)
            workloads[index] = None
            problems.append(f"{where} is not a workload MetaSchedule can read ({first_line(err)})")
    return workloads


def cut_or_damaged(last: bool) -> str:
    return "cut short: a tuning run was killed while writing it" if last else "the file is damaged there"


def first_line(err: Exception) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(err).__name__


def parse_record_line(line: str, where: str, last: bool, problems: list[str]):
    """``(workload index, record JSON)`` of a record line, or None (and a problem) if it is none."""
    try:
        entry = json.loads(line)
    except ValueError:
        problems.append(f"{where} is not JSON ({cut_or_damaged(last)})")
        return None
    if not (isinstance(entry, list) and len(entry) == 2 and type(entry[0]) is int and entry[0] >= 0
            and isinstance(entry[1], list)):
        problems.append(f"{where} is not a tuning record ([workload index, record] expected)")
        return None
    return entry[0], entry[1]


def keep_record(workloads: Workloads, index: int, record: list, where: str, problems: list[str]) -> bool:
    from tvm.s_tir import meta_schedule as ms

    try:
        ms.database.TuningRecord.from_json(record, workloads[index][1])
    except Exception as err:  # noqa: BLE001 (TVM's parse errors have no common type)
        problems.append(f"{where} is not a tuning record MetaSchedule can read ({first_line(err)})")
        return False
    workloads.kept_records.append((index, record))
    return True


def restore_workloads(workloads: Workloads, orphans: dict, model_workloads, db_dir: str, problems: list[str]) -> None:
    """Give each group of records whose workload line is gone the model's kernel whose argument
    shapes they name, if exactly one kernel has them; the others are set aside."""
    from tvm.s_tir import meta_schedule as ms

    candidates = [(mod, args_json(mod)) for mod in model_workloads]
    for index, found in sorted(orphans.items()):
        numbers = ", ".join(str(n) for n, _ in found)
        missing = (f"workload {index + 1}, which {os.path.join(db_dir, WORKLOAD_FILE)} "
                   f"{'cannot read' if index in workloads else f'does not hold ({len(workloads)} lines)'}")
        shapes = {json.dumps(record[3]) if len(record) > 3 else None for _, record in found}
        matches = [mod for mod, args in candidates if args in shapes] if len(shapes) == 1 else []
        if len(matches) != 1:
            problems.append(f"{os.path.join(db_dir, RECORD_FILE)} line(s) {numbers}: {len(found)} record(s) of {missing}; "
                            "no single kernel of the model has their argument shapes, so they were left out")
            continue
        new_index = max(workloads, default=-1) + 1
        workload = ms.database.Workload(matches[0])
        workloads[new_index] = (json.dumps(workload.as_json()), workload)
        kept = [n for n, record in found if keep_record(workloads, new_index, record, f"line {n}", problems)]
        problems.append(f"{os.path.join(db_dir, RECORD_FILE)}: {len(kept)} record(s) of {missing}; "
                        "its workload was rebuilt from the model's kernel with their argument shapes")


def args_json(mod) -> str:
    from tvm.s_tir import meta_schedule as ms

    return json.dumps([a.as_json() for a in ms.arg_info.ArgInfo.from_prim_func(mod["main"])])


def renumbered(workloads: Workloads) -> tuple[list[str], dict[int, int]]:
    """The readable workload lines in order, and old index -> new index (unreadable ones go)."""
    kept = [index for index in sorted(workloads) if workloads[index] is not None]
    return [workloads[i][0] for i in kept], {old: new for new, old in enumerate(kept)}


def read_untuned(path: str, problems: list[str]) -> dict:
    """``untuned.json`` as ``{target: {workload key: entry}}``; unreadable entries are left out
    (``tune`` measures them again)."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            stored = json.load(f)
    except ValueError as err:
        problems.append(f"{path} is not JSON ({err}); the untuned times will be measured again")
        return {}
    if not isinstance(stored, dict):
        problems.append(f"{path} holds no {{target: times}} object; the untuned times will be measured again")
        return {}
    clean = {}
    for target, entries in stored.items():
        good = {key: entry for key, entry in (entries.items() if isinstance(entries, dict) else [])
                if isinstance(entry, dict) and isinstance(entry.get("seconds"), (int, float))}
        if not isinstance(entries, dict) or len(good) != len(entries):
            problems.append(f"{path}: entries of target {target} without a time in seconds were left out")
        clean[target] = good
    return clean


def warn(problems: list[str], afterwards: str) -> None:
    for problem in problems:
        warnings.warn(f"tuning database: {problem}; {afterwards}", stacklevel=3)


def repair(db_dir: str, model_workloads=()) -> None:
    """Rewrite the folder with only what MetaSchedule can load, the original files copied into
    ``DIR/backup-TIMESTAMP/`` first (nothing is deleted); warns what was set aside and why."""
    contents = read(db_dir, model_workloads)
    if not contents.problems:
        return
    backup = os.path.join(db_dir, time.strftime("backup-%Y%m%d-%H%M%S", time.gmtime()))
    os.makedirs(backup, exist_ok=True)
    for name in DATABASE_FILES:
        if os.path.exists(os.path.join(db_dir, name)):
            shutil.copy2(os.path.join(db_dir, name), os.path.join(backup, name))
    write(db_dir, contents)
    warn(contents.problems, f"the original files are kept in {backup}")


def write(folder: str, contents: Contents) -> None:
    for name, lines in ((WORKLOAD_FILE, contents.workloads), (RECORD_FILE, contents.records)):
        text = "".join(line + "\n" for line in lines)
        atomic_write(os.path.join(folder, name), lambda tmp, text=text: open(tmp, "w").write(text))
    if contents.untuned or os.path.exists(os.path.join(folder, UNTUNED_FILE)):
        text = json.dumps(contents.untuned, indent=2) + "\n"
        atomic_write(os.path.join(folder, UNTUNED_FILE), lambda tmp: open(tmp, "w").write(text))


@contextlib.contextmanager
def readable_copy(db_dir: str):
    """A folder holding the loadable part of ``db_dir`` (which is left as it is), for reading."""
    check_folder(db_dir, writable=False)
    contents = read(db_dir)
    warn(contents.problems, f"left out of this compile ({db_dir} is left as it is)")
    with tempfile.TemporaryDirectory(prefix="bnn-tuning-db-") as copy:
        write(copy, contents)
        yield copy
