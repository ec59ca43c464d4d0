"""The tuning database is checked before use and repaired without loss.

The databases are written here with MetaSchedule's own API (records of the default model's
binary kernels, unscheduled traces), so no tuning run is needed; ``tune --trials N`` with N
records stored searches nothing and only repairs and reports.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import warnings

import pytest

from bnn_tvm.measure import tuning_db
from bnn_tvm.measure.tune.records import target_label
from bnn_tvm.measure.tune.tasks import extract_tasks
from bnn_tvm.cli import main

RECORDS_PER_TASK = 3


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """A database folder with RECORDS_PER_TASK records of each binary kernel of the default
    model and their untuned times (so that ``tune`` measures nothing)."""
    from bnn_tvm import targets
    from bnn_tvm.schedules.tuning import tuning_target, workload
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    from bnn_tvm.compilation.compiler import lower_onnx
    from bnn_tvm.frontend.export import default_model_path

    spec = targets.get("x86")
    tasks = extract_tasks(lower_onnx(default_model_path()).mod, spec, ("binary",))
    folder = str(tmp_path_factory.mktemp("db") / "db")
    os.makedirs(folder)
    db = ms.database.JSONDatabase(work_dir=folder, module_equality="structural")
    target = tuning_target(spec)
    for task in tasks:
        mod = workload(task.func)
        entry = db.commit_workload(mod)
        for seconds in range(RECORDS_PER_TASK):
            args = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
            db.commit_tuning_record(ms.database.TuningRecord(s_tir.Schedule(mod).trace, entry, [1.0 + seconds], target, args))
    untuned = {target_label(spec): {t.key: {"seconds": 0.5, "name": t.name, "schedule": "hand"} for t in tasks}}
    json.dump(untuned, open(os.path.join(folder, tuning_db.UNTUNED_FILE), "w"))
    return {"folder": folder, "tasks": len(tasks)}


def copy_of(database, tmp_path) -> str:
    folder = str(tmp_path / "db")
    shutil.copytree(database["folder"], folder)
    return folder


def lines(folder, name) -> list[str]:
    return [line for line in open(os.path.join(folder, name)).read().split("\n") if line]


def tune_binary(folder, database, capsys):
    """``tune`` of the default model's binary kernels to the records stored: no search."""
    trials = str(database["tasks"] * RECORDS_PER_TASK)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["tune", "--tasks", "binary", "--trials", trials, "--db", folder])
    out = capsys.readouterr()
    return code, [str(w.message) for w in caught], out


def test_an_emptied_workload_file_loses_no_record(database, tmp_path, capsys):
    folder = copy_of(database, tmp_path)
    records_before = lines(folder, tuning_db.RECORD_FILE)
    open(os.path.join(folder, tuning_db.WORKLOAD_FILE), "w").close()  # `: > database_workload.json`
    code, warned, out = tune_binary(folder, database, capsys)
    assert code == 0, out.err
    assert len(lines(folder, tuning_db.RECORD_FILE)) == len(records_before)
    assert len(lines(folder, tuning_db.WORKLOAD_FILE)) == database["tasks"]
    assert "0 trial(s) to go" in out.out
    assert any("workload was rebuilt from the model's kernel" in w for w in warned)
    backup = glob.glob(os.path.join(folder, "backup-*"))
    assert len(backup) == 1 and lines(backup[0], tuning_db.RECORD_FILE) == records_before


def test_records_whose_workload_cannot_be_rebuilt_are_kept_in_the_backup(database, tmp_path, capsys):
    folder = copy_of(database, tmp_path)
    records_before = lines(folder, tuning_db.RECORD_FILE)
    open(os.path.join(folder, tuning_db.WORKLOAD_FILE), "w").close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuning_db.repair(folder, model_workloads=[])  # no model to rebuild them from
    assert any("were left out" in str(w.message) and "does not hold (0 lines)" in str(w.message) for w in caught)
    backup = glob.glob(os.path.join(folder, "backup-*"))
    assert len(backup) == 1 and lines(backup[0], tuning_db.RECORD_FILE) == records_before


def test_damage_in_the_middle_is_reported_as_such(database, tmp_path, capsys):
    folder = copy_of(database, tmp_path)
    records = lines(folder, tuning_db.RECORD_FILE)
    broken = records[:]
    broken[1] = broken[1][:40]  # damaged in the middle
    broken[2] = json.dumps([0, "not a record"])  # JSON, but no record
    broken[-1] = broken[-1][:30]  # cut short at the end
    open(os.path.join(folder, tuning_db.RECORD_FILE), "w").write("\n".join(broken) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with tuning_db.readable_copy(folder) as copy:
            kept = lines(copy, tuning_db.RECORD_FILE)
    warned = " | ".join(str(w.message) for w in caught)
    assert len(kept) == len(records) - 3
    assert f"line 2 of {len(records)} is not JSON (the file is damaged there)" in warned
    assert "line 3" in warned and "is not a tuning record" in warned
    assert f"line {len(records)} of {len(records)} is not JSON (cut short: a tuning run was killed" in warned
    assert lines(folder, tuning_db.RECORD_FILE) == [line for line in broken]  # compile leaves it alone


def test_compile_with_a_damaged_database_warns_and_compiles(database, tmp_path, capsys):
    folder = copy_of(database, tmp_path)
    open(os.path.join(folder, tuning_db.RECORD_FILE), "a").write("[0, {\"bad\": 1}]\n")
    open(os.path.join(folder, tuning_db.UNTUNED_FILE), "w").write("{not json")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert main(["compile", "--db", folder, "-o", str(tmp_path / "m.so")]) == 0
    assert (tmp_path / "m.so").is_file()


def test_a_corrupt_untuned_file_is_set_aside_by_tune(database, tmp_path, capsys):
    folder = copy_of(database, tmp_path)
    path = os.path.join(folder, tuning_db.UNTUNED_FILE)
    original = open(path).read()
    open(path, "w").write(original[: len(original) // 2])
    contents = tuning_db.read(folder)
    assert contents.untuned == {} and any("untuned.json is not JSON" in p for p in contents.problems)


@pytest.mark.parametrize("command", ["tune", "compile"])
def test_a_db_that_is_a_file_is_refused(tmp_path, capsys, command):
    path = tmp_path / "db"
    path.write_text("not a folder")
    assert main([command, "--db", str(path), "-o" if command == "compile" else "--trials",
                 str(tmp_path / "m.so") if command == "compile" else "1"]) == 2
    assert f"--db {path} is a file, not a tuning database folder" in capsys.readouterr().err
    assert path.read_text() == "not a folder"


def test_a_record_file_that_is_a_folder_is_refused(tmp_path, capsys):
    os.makedirs(tmp_path / "db" / tuning_db.RECORD_FILE)
    assert main(["tune", "--trials", "1", "--db", str(tmp_path / "db")]) == 2
    assert f"{tuning_db.RECORD_FILE} is a folder" in capsys.readouterr().err


def test_a_db_that_cannot_be_written_is_refused(tmp_path, capsys, monkeypatch):
    """A read-only file system (simulated: this test may run as root, whom permissions do not stop)."""
    import errno
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    assert main(["tune", "--trials", "1", "--db", str(tmp_path / "db")]) == 2
    assert "cannot write there (Read-only file system)" in capsys.readouterr().err
