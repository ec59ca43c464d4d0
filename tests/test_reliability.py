"""Data-loss paths, tracebacks on bad input and the RPC guards: one test per defect found."""

from __future__ import annotations

import os

import numpy as np
import pytest
from onnx_builders import GraphBuilder, save

from bnn_tvm.cli import main


@pytest.fixture(scope="module")
def compiled_default(tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "digits.so"
    assert main(["compile", "--target", "x86", "-o", str(out)]) == 0
    return out


def digits_batch(path, n=3):
    np.save(path, np.random.default_rng(0).standard_normal((n, 1, 8, 8)).astype(np.float32))
    return str(path)


# 3 ------------------------------------------------------------------------------------------


def test_run_refuses_an_output_name_numpy_would_rename(compiled_default, tmp_path, capsys):
    x = digits_batch(tmp_path / "x.npy")
    target = tmp_path / "keep.bin"
    target.write_bytes(b"precious")
    assert main(["run", str(compiled_default), "--input", x, "--output", str(target)]) == 2
    assert "--output" in capsys.readouterr().err and str(target) in capsys.readouterr().err + str(target)
    assert target.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.bin", "x.npy"]


# 14 -----------------------------------------------------------------------------------------


def test_run_refuses_an_empty_batch_and_an_empty_file(compiled_default, tmp_path, capsys):
    empty_batch = tmp_path / "empty.npy"
    np.save(empty_batch, np.zeros((0, 1, 8, 8), np.float32))
    zero_bytes = tmp_path / "zero.npy"
    zero_bytes.write_bytes(b"")
    for given, expected in ((empty_batch, "the batch is empty"), (zero_bytes, "empty or cut short")):
        code = main(["run", str(compiled_default), "--input", str(given), "--output", str(tmp_path / "y.npy")])
        err = capsys.readouterr().err
        assert code == 2 and expected in err and str(given) in err
    assert not (tmp_path / "y.npy").exists()


# 4 ------------------------------------------------------------------------------------------


def rows_model(path) -> str:
    """A binary conv whose output is reshaped to rows, ``[N*16, 16]``: its first axis is not the batch."""
    g = GraphBuilder([1, 8, 4, 4], seed=3)
    y = g.conv(g.binarize("x"), g.binary_weight((16, 8, 3, 3)), pad=1)
    rows = g.node("Reshape", [y, g.const(np.array([-1, 16], np.int64), "shape")])
    return save(g.model([rows]), path)


def test_run_never_truncates_outputs_whose_first_axis_is_not_the_batch(tmp_path, capsys):
    from bnn_tvm.compilation.runtime import CompiledRunner
    from bnn_tvm.compilation.reference import reference_outputs
    from bnn_tvm.frontend.onnx_import import load_onnx

    model = rows_model(tmp_path / "rows.onnx")
    module = tmp_path / "rows.so"
    assert main(["compile", model, "--batch", "2", "-o", str(module)]) == 0
    x = np.random.default_rng(1).standard_normal((2, 8, 4, 4)).astype(np.float32)
    ours = CompiledRunner.load(str(module)).run(x)[0]
    assert ours.shape == (32, 16)
    np.testing.assert_allclose(ours, reference_outputs(load_onnx(model), x, "x")[0], rtol=1e-5)
    np.save(tmp_path / "x3.npy", np.concatenate([x, x[:1]]))
    capsys.readouterr()
    code = main(["run", str(module), "--input", str(tmp_path / "x3.npy"), "--output", str(tmp_path / "y.npy")])
    err = capsys.readouterr().err
    assert code == 2 and "takes exactly 2" in err and "--batch 3" in err
    assert not (tmp_path / "y.npy").exists()


def test_verify_a_model_with_row_outputs(tmp_path, capsys):
    assert main(["verify", rows_model(tmp_path / "rows.onnx")]) == 0
    assert "VERIFY OK" in capsys.readouterr().out


# 6 ------------------------------------------------------------------------------------------


def test_compile_refuses_an_output_that_is_the_model(tmp_path, capsys):
    from bnn_tvm.frontend.export import default_model_path

    model = tmp_path / "digits.onnx"
    model.write_bytes(open(default_model_path(), "rb").read())
    before = model.read_bytes()
    assert main(["compile", str(model), "-o", str(model)]) == 2
    assert "is the model being read" in capsys.readouterr().err
    assert model.read_bytes() == before
    os.symlink(model, tmp_path / "link.onnx")  # the same file under another name
    assert main(["compile", str(model), "-o", str(tmp_path / "link.onnx")]) == 2
    assert model.read_bytes() == before


def test_export_refuses_an_output_that_is_the_checkpoint(tmp_path, capsys):
    from bnn_tvm.frontend.export import default_checkpoint_path

    checkpoint = tmp_path / "digits.pt"
    checkpoint.write_bytes(open(default_checkpoint_path(), "rb").read())
    before = checkpoint.read_bytes()
    assert main(["export", str(checkpoint), "-o", str(checkpoint)]) == 2
    assert f"-o {checkpoint} is the model being read" in capsys.readouterr().err
    assert checkpoint.read_bytes() == before


# 16 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", ["0", "-2"])
def test_a_batch_below_one_is_refused(tmp_path, capsys, batch):
    assert main(["compile", "--batch", batch, "-o", str(tmp_path / "m.so")]) == 2
    assert f"--batch {batch}: must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "m.so").exists()


# 17 -----------------------------------------------------------------------------------------


def test_a_model_with_an_integer_input_is_refused_at_compile(tmp_path, capsys):
    from onnx import TensorProto, helper

    g = GraphBuilder([1, 4])
    g.input = helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 4])
    y = g.node("Relu", [g.node("Cast", ["x"], to=TensorProto.FLOAT)])
    model = save(g.model([y]), tmp_path / "ints.onnx")
    assert main(["compile", model, "-o", str(tmp_path / "m.so")]) == 2
    err = capsys.readouterr().err
    assert "input 'x' is int64" in err and "float32" in err and model in err
    assert not (tmp_path / "m.so").exists()


# 18 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("minutes", ["-1", "0"])
def test_tune_refuses_a_time_limit_that_is_not_positive(tmp_path, capsys, minutes):
    assert main(["tune", "--minutes", minutes, "--db", str(tmp_path / "db")]) == 2
    assert f"--minutes {minutes}: must be positive" in capsys.readouterr().err
    assert not (tmp_path / "db").exists()


# 7 ------------------------------------------------------------------------------------------


def test_a_killed_compile_leaves_nothing_after_the_next_command(tmp_path):
    """SIGKILL during the export (its temporary library exists beside the output): the next
    command removes it and the killed command's temporary folder."""
    import glob
    import signal
    import subprocess
    import sys
    import time

    env = dict(os.environ, BNN_TVM_CACHE=str(tmp_path / "cache"))
    out = tmp_path / "out"
    out.mkdir()
    command = [sys.executable, "-m", "bnn_tvm", "compile", "-o", str(out / "m.so")]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not glob.glob(str(out / ".tmp-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert glob.glob(str(out / ".tmp-*")), "the compile ended before its export began"
    assert os.listdir(tmp_path / "cache" / "tmp"), "the killed compile had no temporary folder"
    subprocess.run(command, env=env, check=True, capture_output=True)
    assert sorted(os.listdir(out)) == ["m.so"]
    assert os.listdir(tmp_path / "cache" / "tmp") == []


def test_temporary_files_of_running_processes_stay(tmp_path):
    from bnn_tvm.atomic_files import atomic_write

    mine = tmp_path / f".tmp-{os.getpid()}-abc.so"  # a write in progress in a live process
    mine.write_bytes(b"")
    foreign = tmp_path / ".tmp-notapid.so"
    foreign.write_bytes(b"")
    atomic_write(str(tmp_path / "m.txt"), lambda tmp: open(tmp, "w").write("x"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, foreign.name, "m.txt"])


# 8, 9, 10, 11: models that used to end in a traceback -----------------------------------------


def default_model_copy():
    import onnx

    from bnn_tvm.frontend.export import default_model_path

    return onnx.load(default_model_path())


def unique_after_binary_conv(path) -> str:
    g = GraphBuilder([1, 8, 4, 4], seed=3)
    y = g.conv(g.binarize("x"), g.binary_weight((16, 8, 3, 3)), pad=1)
    y = g.batch_norm(y, *g.random_bn(16))
    return save(g.model([g.node("Unique", [y])]), path)


def short_initializer(path) -> str:
    model = default_model_copy()
    weight = next(i for i in model.graph.initializer if len(i.raw_data) > 100)
    weight.raw_data = weight.raw_data[:-8]
    return save(model, path)


def with_opset(path, version) -> str:
    from onnx import helper

    model = default_model_copy()
    del model.opset_import[:]
    if version is not None:
        model.opset_import.append(helper.make_opsetid("", version))
    return save(model, path)


def huge_input(path) -> str:
    g = GraphBuilder([1, 3, 100000, 100000])
    return save(g.model([g.node("Relu", ["x"])]), path)


def constant_of_shape_bomb(path) -> str:
    from onnx import numpy_helper

    g = GraphBuilder([1, 4])
    shape = g.const(np.array([100000, 100000, 10], np.int64))
    bomb = g.node("ConstantOfShape", [shape], value=numpy_helper.from_array(np.array([1.0], np.float32)))
    return save(g.model([g.node("Add", ["x", bomb])]), path)


BAD_MODELS = {
    "unknown_shape": (unique_after_binary_conv, "node 'node_unique_13' has an output of shape [unique_numbers]"),
    "short_raw_data": (short_initializer, "initializer '0.weight' of dims [32, 1, 3, 3] holds 1144 bytes (1152 needed)"),
    "no_opset": (lambda p: with_opset(p, None), "declares no ONNX opset"),
    "opset_3": (lambda p: with_opset(p, 3), "ONNX opset 3 is not supported"),
    "opset_99": (lambda p: with_opset(p, 99), "ONNX opset 99 is not supported"),
    "huge_input": (huge_input, "input 'x' of shape [1, 3, 100000, 100000] needs 111.8 GiB, more than this machine's"),
    "constant_of_shape_bomb": (constant_of_shape_bomb, "(ConstantOfShape) of shape [100000, 100000, 10] needs 372.5 GiB"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
@pytest.mark.parametrize("command", ["compile", "verify", "inspect"])
def test_bad_models_are_refused_naming_the_fault(tmp_path, capsys, case, command):
    build, expected = BAD_MODELS[case]
    model = build(tmp_path / f"{case}.onnx")
    args = [command, model] + (["-o", str(tmp_path / "m.so")] if command == "compile" else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert expected in err and model in err
    assert sorted(os.listdir(tmp_path)) == [f"{case}.onnx"]


def test_summary_refuses_a_short_initializer(tmp_path, capsys):
    model = short_initializer(tmp_path / "short.onnx")
    assert main(["summary", model]) == 2
    assert "initializer '0.weight'" in capsys.readouterr().err


def test_verify_reports_onnx_runtime_failures_as_errors(tmp_path, monkeypatch, capsys):
    """An opset ONNX defines but this ONNX Runtime does not (simulated: ORT refusing the model)."""
    import onnxruntime

    def refuse(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : opset 28 is under development\nmore")

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)
    from bnn_tvm.frontend.export import default_model_path

    assert main(["verify", default_model_path()]) == 2
    err = capsys.readouterr().err
    assert "ONNX Runtime, the reference, cannot run the model: [ONNXRuntimeError]" in err and "more" not in err


# 15 -----------------------------------------------------------------------------------------


def checkpoint_with(path, **fields) -> str:
    import torch

    from bnn_tvm.frontend.export import default_checkpoint_path

    checkpoint = torch.load(default_checkpoint_path(), map_location="cpu", weights_only=True)
    checkpoint.update(fields)
    torch.save(checkpoint, path)
    return str(path)


BAD_CHECKPOINTS = {
    "unknown_option": ({"options": {"widht": 3}}, "field 'options' has an unknown key 'widht'"),
    "list_as_model": ({"model": ["digits"]}, "field 'model' is ['digits'], not a zoo model"),
    "unknown_model": ({"model": "resnet9000"}, "field 'model' is 'resnet9000', not a zoo model"),
    "unknown_quantizer": ({"options": {"input_quantizer": "magic"}}, "field 'options.input_quantizer' is 'magic'"),
    "options_not_a_dict": ({"options": ["ste_sign"]}, "field 'options' is a list"),
    "bad_classes": ({"options": {"num_classes": "ten"}}, "field 'options.num_classes' is 'ten', not a positive integer"),
}


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_checkpoint_fields_are_checked_naming_the_checkpoint_and_field(tmp_path, capsys, case):
    fields, expected = BAD_CHECKPOINTS[case]
    checkpoint = checkpoint_with(tmp_path / f"{case}.pt", **fields)
    assert main(["export", checkpoint, "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert expected in err and checkpoint in err and "--quantizer" not in err
    assert not (tmp_path / "m.onnx").exists()


# 20 -----------------------------------------------------------------------------------------


def test_a_module_for_another_architecture_is_named_as_such(compiled_default, tmp_path, capsys):
    import platform
    import struct

    if platform.machine() != "x86_64":
        pytest.skip("the test relabels an x86-64 module")
    module = bytearray(compiled_default.read_bytes())
    module[18:20] = struct.pack("<H", 183)  # e_machine: AArch64, as a module compiled for rasp3b
    aarch64 = tmp_path / "rasp3b.so"
    aarch64.write_bytes(bytes(module))
    code = main(["run", str(aarch64), "--input", digits_batch(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")])
    err = capsys.readouterr().err
    assert code == 2 and f"{aarch64} was compiled for AArch64" in err and "this machine is x86_64" in err
    assert "No such file" not in err


# 2, 21 --------------------------------------------------------------------------------------


@pytest.fixture
def unrelated_process(tmp_path, monkeypatch):
    """A process in its own group that bnn_tvm did not start, and an empty run folder."""
    import subprocess
    import sys

    monkeypatch.setenv("BNN_TVM_CACHE", str(tmp_path / "cache"))
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def write_state(name: str, state: dict) -> str:
    import json

    from bnn_tvm.devices.processes import run_dir

    path = os.path.join(run_dir(), name)
    with open(path, "w") as f:
        json.dump(state, f)
    return path


@pytest.mark.parametrize("pid_start", [None, "1"])  # an older state file; a recorded start that differs
def test_stop_never_signals_a_process_that_reused_a_stale_pid(unrelated_process, capsys, pid_start):
    pid = unrelated_process.pid
    tracker = write_state("tracker-9190.json", {"pid": pid, "host": "127.0.0.1", "port": 9190, "log": "x",
                                                 "pid_start": pid_start})
    board = write_state("board-rasp3b.json", {"name": "rasp3b", "target": "rasp3b", "pid": pid, "host": "127.0.0.1",
                                              "port": 9090, "key": "rasp3b", "tracker": None, "counting": False,
                                              "log": "x", "started": 0.0, "pid_start": pid_start})
    assert main(["tracker", "stop"]) == 0
    assert main(["board", "stop"]) == 0
    out = capsys.readouterr().out
    assert unrelated_process.poll() is None  # still running
    assert not os.path.exists(tracker) and not os.path.exists(board)
    assert f"removed the stale state file {tracker}" in out and f"process {pid} now belongs to another program" in out
    assert f"removed the stale state file {board}" in out


def test_tracker_stop_without_a_port_stops_every_tracker(monkeypatch, tmp_path):
    """As `board stop` stops every board (the trackers are faked: no process is started)."""
    from bnn_tvm.devices import tracker

    monkeypatch.setenv("BNN_TVM_CACHE", str(tmp_path / "cache"))
    states = [tracker.TrackerState(1, "127.0.0.1", port, "log") for port in (9190, 9200)]
    stopped = []
    monkeypatch.setattr(tracker, "running", lambda: states)
    monkeypatch.setattr(tracker, "kill_group", stopped.append)
    assert main(["tracker", "stop"]) == 0
    assert stopped == [1, 1]


# 22 -----------------------------------------------------------------------------------------

ABSOLUTE_PATH = rb"(?:/home/|/work/|/tmp/|/usr/|/root/|/opt/|site-packages|\.py\")"


def exporter_metadata(model) -> list[str]:
    found = [f"model {p.key}" for p in model.metadata_props] + [f"graph {p.key}" for p in model.graph.metadata_props]
    for node in model.graph.node:
        found += [f"node {node.name} {p.key}" for p in node.metadata_props] + ([f"node {node.name} doc"] if node.doc_string else [])
    for item in [*model.graph.initializer, *model.graph.input, *model.graph.output, *model.graph.value_info]:
        found += [f"{item.name} {p.key}" for p in item.metadata_props]
    return found


def test_the_bundled_model_carries_no_exporter_metadata():
    import re

    import onnx

    from bnn_tvm.frontend.export import default_model_path

    raw = open(default_model_path(), "rb").read()
    assert re.findall(ABSOLUTE_PATH, raw) == []
    assert exporter_metadata(onnx.load_from_string(raw)) == []


def test_exported_models_carry_no_exporter_metadata(tmp_path, capsys):
    import re

    import onnx

    from bnn_tvm.frontend.export import default_checkpoint_path

    out = tmp_path / "digits.onnx"
    assert main(["export", default_checkpoint_path(), "-o", str(out)]) == 0
    raw = out.read_bytes()
    assert re.findall(ABSOLUTE_PATH, raw) == []
    assert exporter_metadata(onnx.load_from_string(raw)) == []


# 1 ------------------------------------------------------------------------------------------


def test_a_server_reachable_from_other_machines_is_warned_about():
    from bnn_tvm.devices.board import exposure_warning

    assert exposure_warning("127.0.0.1", 9190, "RPC tracker") is None
    assert exposure_warning("localhost", 9190, "RPC tracker") is None
    warning = exposure_warning("0.0.0.0", 9090, "emulated board's RPC server")
    assert warning.startswith("warning: the emulated board's RPC server listens on 0.0.0.0:9090, reachable from other")
    assert "runs any code a client sends" in warning and "no authentication" in warning


def test_tracker_start_on_all_interfaces_warns(monkeypatch, tmp_path, capsys):
    from bnn_tvm.devices import tracker

    monkeypatch.setenv("BNN_TVM_CACHE", str(tmp_path))
    started = []
    monkeypatch.setattr(tracker, "start", lambda host, port: started.append((host, port)) or
                        tracker.TrackerState(1, host, port, "log"))
    assert main(["tracker", "start", "--host", "0.0.0.0"]) == 0
    assert started == [("0.0.0.0", 9190)]
    assert "warning: the RPC tracker (it hands out its boards) listens on 0.0.0.0:9190" in capsys.readouterr().err
    assert main(["tracker", "start"]) == 0
    assert capsys.readouterr().err == ""


def test_a_board_falls_back_to_this_user_with_a_stated_reason(tmp_path):
    """Where the unprivileged account cannot reach the board's files (a root-only folder), the
    board runs as this user and says why."""
    from bnn_tvm.devices import board

    work = tmp_path / "private" / "board.d"
    work.mkdir(parents=True)
    os.chmod(tmp_path / "private", 0o700)
    account, reason = board.board_account([str(tmp_path / "private" / "python")], str(work))
    assert account is None
    if os.geteuid() == 0:
        assert reason == f"user {board.UNPRIVILEGED_USER} cannot reach {work}"
    else:
        assert reason == ""  # not root: the board runs as this (unprivileged) user anyway


def test_the_memory_check_refuses_only_what_cannot_fit(monkeypatch):
    """Many activations that together exceed the memory are no reason to refuse (the VM reuses
    their memory); one tensor, or constants, larger than the memory are."""
    from bnn_tvm.compilation import compiler
    from bnn_tvm.errors import BnnError

    gib = 2**30
    page = os.sysconf("SC_PAGE_SIZE")
    monkeypatch.setattr(os, "sysconf", lambda name: page if name == "SC_PAGE_SIZE" else 4 * gib // page)
    activations = [(f"tensor 't{i}'", ([gib // 4], gib)) for i in range(10)]  # 10 GiB in all, 1 GiB each
    monkeypatch.setattr(compiler, "tensor_sizes", lambda model: iter(activations))
    compiler.check_memory(None, "x", [1, 4], "m.onnx")
    activations.append(("tensor 'big'", ([5 * gib // 4], 5 * gib)))
    with pytest.raises(BnnError, match=r"m.onnx: tensor 'big' of shape \[\d+\] needs 5.0 GiB, more than this machine's 4.0 GiB"):
        compiler.check_memory(None, "x", [1, 4], "m.onnx")
    activations[-1] = ("constant of node 'c' (ConstantOfShape)", ([gib // 2], 3 * gib))
    activations.append(("constant of node 'd' (ConstantOfShape)", ([gib // 2], 3 * gib)))
    with pytest.raises(BnnError, match="its ConstantOfShape constants need 6.0 GiB"):
        compiler.check_memory(None, "x", [1, 4], "m.onnx")
