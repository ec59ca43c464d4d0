"""The command line on a generated corpus of broken models, checkpoints, inputs, modules, options
and tuning databases. Each case must end as a careful user expects: exit code 2, one
line on stderr that names the file, node or option at fault, no traceback, no file left behind,
and the output that was already there untouched.

Every case is a ``python -m bnn_tvm`` process. Starting one costs seconds of imports (torch,
TVM), so the cases run in processes forked from this one after those imports (each child runs
the package's ``__main__`` as ``python -m`` does, with its own stdout and stderr files, and
exits with the code the interpreter would give); a few cases are also run as genuine fresh
``python -m bnn_tvm`` processes, to show the two agree.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx_builders import GraphBuilder, save

# imported before forking, so that each child starts warm
import bnn_tvm.cli  # noqa: F401,E402
import onnxruntime  # noqa: F401,E402
import onnxscript.optimizer  # noqa: F401,E402
import bnn_tvm.relay_passes  # noqa: F401,E402
import bnn_tvm.schedules  # noqa: F401,E402
import tvm.relax.frontend.onnx  # noqa: F401,E402
from bnn_tvm.frontend.export import default_checkpoint_path, default_model_path

PRECIOUS = b"the previous output, which must survive\n"


@dataclass
class Case:
    args: list[str]  # {name} placeholders: files of the case folder; {module}: the compiled module
    expected: str  # in the error line: what names the fault
    files: dict[str, Callable[[str], None]] = field(default_factory=dict)  # name -> writer(path)
    output: str | None = None  # a file in the case folder that exists before and must stay as it was


# --------------------------------------------------------------------------------------------
# The corpus


def copy_of(source: str) -> Callable[[str], None]:
    return lambda path: open(path, "wb").write(open(source, "rb").read())


def raw(data: bytes) -> Callable[[str], None]:
    return lambda path: open(path, "wb").write(data)


def onnx_edit(edit: Callable[[onnx.ModelProto], None]) -> Callable[[str], None]:
    def write(path: str) -> None:
        model = onnx.load(default_model_path())
        edit(model)
        onnx.save(model, path)

    return write


def set_opset(version):
    def edit(model):
        del model.opset_import[:]
        if version is not None:
            model.opset_import.append(helper.make_opsetid("", version))

    return edit


def cut_weight(model):
    weight = next(i for i in model.graph.initializer if len(i.raw_data) > 100)
    weight.raw_data = weight.raw_data[:-8]


def unknown_op(model):
    model.graph.node[3].op_type = "FooBar"
    model.graph.node[3].name = "mystery"


def dangling_input(model):
    model.graph.node[2].input[0] = "nowhere"


def built(make: Callable[[], onnx.ModelProto]) -> Callable[[str], None]:
    return lambda path: save(make(), path)


def unique_after_conv():
    g = GraphBuilder([1, 8, 4, 4], seed=3)
    y = g.batch_norm(g.conv(g.binarize("x"), g.binary_weight((16, 8, 3, 3)), pad=1), *g.random_bn(16))
    return g.model([g.node("Unique", [y])])


def huge_input():
    g = GraphBuilder([1, 3, 100000, 100000])
    return g.model([g.node("Relu", ["x"])])


def constant_bomb():
    g = GraphBuilder([1, 4])
    shape = g.const(np.array([100000, 100000, 10], np.int64))
    bomb = g.node("ConstantOfShape", [shape], value=numpy_helper.from_array(np.array([1.0], np.float32)))
    return g.model([g.node("Add", ["x", bomb])])


def integer_input():
    g = GraphBuilder([1, 4])
    g.input = helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 4])
    return g.model([g.node("Relu", [g.node("Cast", ["x"], to=TensorProto.FLOAT)])])


def checkpoint(**fields) -> Callable[[str], None]:
    def write(path: str) -> None:
        saved = torch.load(default_checkpoint_path(), map_location="cpu", weights_only=True)
        saved.update(fields)
        torch.save(saved, path)

    return write


def wrong_weights(path: str) -> None:
    saved = torch.load(default_checkpoint_path(), map_location="cpu", weights_only=True)
    name = next(iter(saved["state_dict"]))
    saved["state_dict"][name] = torch.zeros(3, 3)
    torch.save(saved, path)


class NotPlainData:  # a pickled object of a class: torch.load(weights_only=True) refuses it
    pass


def array(x) -> Callable[[str], None]:
    return lambda path: np.save(path, x) if not path.endswith(".npz") else np.savez(path, x=x)


def digits(n=2, dtype=np.float32):
    return np.random.default_rng(0).standard_normal((n, 1, 8, 8)).astype(dtype)


def truncated_npy(path: str) -> None:
    np.save(path, digits(4))
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def object_npy(path: str) -> None:
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)


def relabelled_module(source: str) -> Callable[[str], None]:
    def write(path: str) -> None:
        data = bytearray(open(source, "rb").read())
        data[18:20] = struct.pack("<H", 183)  # e_machine AArch64: a module compiled for rasp3b
        open(path, "wb").write(bytes(data))

    return write


def database_with_record_folder(path: str) -> None:
    os.makedirs(os.path.join(path, "database_tuning_record.json"))
    open(os.path.join(path, "database_workload.json"), "w").close()


def compile_case(model_writer, expected, name="model.onnx", command="compile") -> Case:
    args = [command, f"{{{name}}}"] + (["-o", "{out.so}"] if command == "compile" else [])
    return Case(args, expected, {name: model_writer}, "out.so" if command == "compile" else None)


def export_case(writer, expected) -> Case:
    return Case(["export", "{ck.pt}", "-o", "{out.onnx}"], expected, {"ck.pt": writer}, "out.onnx")


def run_case(writer, expected, name="x.npy") -> Case:
    return Case(["run", "{module}", "--input", f"{{{name}}}", "--output", "{out.npy}"], expected, {name: writer}, "out.npy")


def corpus(module: str) -> dict[str, Case]:
    digits_onnx = open(default_model_path(), "rb").read()
    return {
        # models
        "model_truncated": compile_case(raw(digits_onnx[: len(digits_onnx) // 3]), "is not an ONNX model"),
        "model_not_onnx": compile_case(raw(b"name,weight\nconv1,0.5\n"), "is not an ONNX model"),
        "model_0_bytes": compile_case(raw(b""), "is not an ONNX model"),
        "model_no_opset": compile_case(onnx_edit(set_opset(None)), "declares no ONNX opset"),
        "model_opset_3": compile_case(onnx_edit(set_opset(3)), "ONNX opset 3 is not supported"),
        "model_opset_99": compile_case(onnx_edit(set_opset(99)), "ONNX opset 99 is not supported"),
        "model_opset_3_verify": compile_case(onnx_edit(set_opset(3)), "ONNX opset 3 is not supported", command="verify"),
        "model_short_raw_data": compile_case(onnx_edit(cut_weight), "initializer '0.weight' of dims [32, 1, 3, 3]"),
        "model_short_raw_data_inspect": compile_case(onnx_edit(cut_weight), "initializer '0.weight'", command="inspect"),
        "model_short_raw_data_summary": compile_case(onnx_edit(cut_weight), "initializer '0.weight'", command="summary"),
        "model_unknown_op": compile_case(onnx_edit(unknown_op), "node 'mystery' has unsupported op type 'FooBar'"),
        "model_dangling_input": compile_case(onnx_edit(dangling_input), "reads 'nowhere'"),
        "model_unknown_shape": compile_case(built(unique_after_conv), "node 'node_unique_13' has an output of shape"),
        "model_huge_input": compile_case(built(huge_input), "input 'x' of shape [1, 3, 100000, 100000] needs 111.8 GiB"),
        "model_constant_bomb": compile_case(built(constant_bomb), "(ConstantOfShape) of shape [100000, 100000, 10] needs 372.5 GiB"),
        "model_int64_input": compile_case(built(integer_input), "input 'x' is int64"),
        "model_missing": Case(["compile", "{absent.onnx}", "-o", "{out.so}"], "is neither a file nor a zoo model",
                              output="out.so"),
        # checkpoints
        # seeded: bytes of seed 17 make torch's weights-only unpickler raise an IndexError
        "checkpoint_random_bytes": export_case(raw(np.random.default_rng(0).bytes(512)), "not a bnn_tvm checkpoint"),
        "checkpoint_random_bytes_index_error": export_case(raw(np.random.default_rng(17).bytes(512)),
                                                           "not a bnn_tvm checkpoint"),
        "checkpoint_0_bytes": export_case(raw(b""), "not a bnn_tvm checkpoint"),
        "checkpoint_code": export_case(lambda p: torch.save({"model": NotPlainData()}, p), "weights_only=True) refused it"),
        "checkpoint_unknown_option": export_case(checkpoint(options={"widht": 3}), "field 'options' has an unknown key 'widht'"),
        "checkpoint_list_as_model": export_case(checkpoint(model=["digits"]), "field 'model' is ['digits']"),
        "checkpoint_unknown_model": export_case(checkpoint(model="resnet9000"), "field 'model' is 'resnet9000'"),
        "checkpoint_unknown_quantizer": export_case(checkpoint(options={"kernel_quantizer": "magic"}),
                                                    "field 'options.kernel_quantizer' is 'magic'"),
        "checkpoint_wrong_weights": export_case(wrong_weights, "weights do not fit zoo model 'digits'"),
        "checkpoint_compiled": Case(["compile", "{ck.pt}", "-o", "{out.so}"], "field 'model' is 'resnet9000'",
                                    {"ck.pt": checkpoint(model="resnet9000")}, "out.so"),
        # inputs
        "input_wrong_shape": run_case(array(np.zeros((2, 3, 8, 8), np.float32)), "does not match the model's (N, 1, 8, 8)"),
        "input_integers": run_case(array(digits(dtype=np.int64)), "input dtype int64 is not floating point"),
        "input_empty_batch": run_case(array(digits(0)), "the batch is empty"),
        "input_0_bytes": run_case(raw(b""), "the file is empty or cut short"),
        "input_truncated": run_case(truncated_npy, "cannot read input"),
        "input_npz": run_case(array(digits()), "it is an .npz archive", name="x.npz"),
        "input_objects": run_case(object_npy, "cannot read input"),
        "input_missing": Case(["run", "{module}", "--input", "{absent.npy}", "--output", "{out.npy}"], "cannot read input",
                              output="out.npy"),
        # compiled modules
        "module_not_a_library": Case(["run", "{m.so}", "--input", "{x.npy}", "--output", "{out.npy}"], "is not a bnn_tvm module",
                                     {"m.so": raw(b"not a library"), "x.npy": array(digits())}, "out.npy"),
        "module_other_architecture": Case(["run", "{m.so}", "--input", "{x.npy}", "--output", "{out.npy}"],
                                          "was compiled for AArch64",
                                          {"m.so": relabelled_module(module), "x.npy": array(digits())}, "out.npy"),
        "module_missing": Case(["run", "{absent.so}", "--input", "{x.npy}", "--output", "{out.npy}"], "no compiled module at",
                               {"x.npy": array(digits())}, "out.npy"),
        # options
        "option_output_not_npy": Case(["run", "{module}", "--input", "{x.npy}", "--output", "{out.so}"],
                                      "give a .npy (first output) or .npz", {"x.npy": array(digits())}, "out.so"),
        "option_batch_0": Case(["compile", "--batch", "0", "-o", "{out.so}"], "--batch 0: must be at least 1", output="out.so"),
        "option_batch_negative": Case(["compile", "--batch", "-2", "-o", "{out.so}"], "--batch -2: must be at least 1",
                                      output="out.so"),
        "option_output_is_the_model": Case(["compile", "{model.onnx}", "-o", "{model.onnx}"], "is the model being read",
                                           {"model.onnx": copy_of(default_model_path())}),
        "option_export_over_the_checkpoint": Case(["export", "{ck.pt}", "-o", "{ck.pt}"], "is the model being read",
                                                  {"ck.pt": copy_of(default_checkpoint_path())}),
        "option_minutes_negative": Case(["tune", "--minutes", "-1", "--db", "{db}"], "--minutes -1: must be positive"),
        # tuning databases
        "db_is_a_file_compile": Case(["compile", "--db", "{db}", "-o", "{out.so}"], "is a file, not a tuning database folder",
                                     {"db": raw(b"{}")}, "out.so"),
        "db_is_a_file_tune": Case(["tune", "--trials", "1", "--db", "{db}"], "is a file, not a tuning database folder",
                                  {"db": raw(b"{}")}),
        "db_record_file_a_folder": Case(["compile", "--db", "{db}", "-o", "{out.so}"],
                                        "database_tuning_record.json is a folder",
                                        {"db": database_with_record_folder}, "out.so"),
        "db_missing": Case(["compile", "--db", "{db}", "-o", "{out.so}"], "no tuning database there", output="out.so"),
    }


# --------------------------------------------------------------------------------------------
# Running a case


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def module(tmp_path_factory, cache) -> str:
    """The default model compiled once, by a genuine ``python -m bnn_tvm compile``."""
    path = str(tmp_path_factory.mktemp("module") / "digits.so")
    subprocess.run([sys.executable, "-m", "bnn_tvm", "compile", "-o", path], check=True, capture_output=True,
                   env=dict(os.environ, BNN_TVM_CACHE=cache))
    return path


@dataclass
class Result:
    code: int
    stderr: bytes


def prepare(case: Case, folder: str, module: str) -> list[str]:
    os.makedirs(folder)
    for name, write in case.files.items():
        write(os.path.join(folder, name))
    if case.output:
        open(os.path.join(folder, case.output), "wb").write(PRECIOUS)
    paths = {name: os.path.join(folder, name) for name in re.findall(r"\{([^}]+)\}", " ".join(case.args))}
    paths["module"] = module
    return [re.sub(r"\{([^}]+)\}", lambda m: paths[m.group(1)], arg) for arg in case.args]


def run_forked(args: list[str], cache: str, folder: str) -> Result:
    """``python -m bnn_tvm ARGS`` in a child forked from this warm process."""
    err_path = os.path.join(folder, "..", os.path.basename(folder) + ".stderr")
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            out_fd = os.open(os.devnull, os.O_WRONLY)
            err_fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(out_fd, 1)
            os.dup2(err_fd, 2)
            sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
            os.environ["BNN_TVM_CACHE"] = cache
            sys.argv = [sys.executable, *args]
            import runpy
            import warnings

            warnings.resetwarnings()  # the interpreter's defaults, not pytest's filters
            warnings.simplefilter("default")
            try:
                runpy.run_module("bnn_tvm", run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            except BaseException:  # noqa: BLE001 (what the interpreter prints for an uncaught error)
                import traceback

                traceback.print_exc()
                code = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    status = wait_or_kill(pid, CASE_TIMEOUT_S)
    with open(err_path, "rb") as f:
        stderr = f.read()
    os.remove(err_path)
    if status is None:
        return Result(-9, stderr + f"\n(killed after {CASE_TIMEOUT_S} s)".encode())
    return Result(os.waitstatus_to_exitcode(status), stderr)


# A case that is refused takes well under a second. One that is not may go on into ONNX Runtime
# or TVM, whose thread pools can deadlock in a forked child: it is killed, and fails.
CASE_TIMEOUT_S = 60


def wait_or_kill(pid: int, timeout: float):
    """The child's wait status, or None if it ran past ``timeout`` seconds (then it is killed)."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def run_fresh(args: list[str], cache: str) -> Result:
    done = subprocess.run([sys.executable, "-m", "bnn_tvm", *args], capture_output=True,
                          env=dict(os.environ, BNN_TVM_CACHE=cache))
    return Result(done.returncode, done.stderr)


def terminal_lines(stderr: bytes) -> list[str]:
    """The lines a terminal shows: a progress bar redrawn with carriage returns, then cleared,
    leaves only what follows its last carriage return."""
    lines = [line.rsplit("\r", 1)[-1] for line in stderr.decode(errors="replace").split("\n")]
    return [line for line in lines if line.strip()]


def snapshot(folder: str) -> dict[str, bytes | None]:
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            found[os.path.relpath(os.path.join(root, name), folder)] = None
        for name in files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = open(path, "rb").read()
    return found


def check(case: Case, result: Result, before: dict, folder: str, cache: str) -> None:
    lines = terminal_lines(result.stderr)
    assert b"Traceback" not in result.stderr, result.stderr.decode(errors="replace")
    assert result.code == 2, result.stderr.decode(errors="replace")
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert case.expected in lines[0], lines[0]
    named = [a for a in case_args_named(case, folder)]
    assert any(name in lines[0] for name in named), f"names none of {named}: {lines[0]}"
    assert snapshot(folder) == before  # nothing written, nothing left behind, the output untouched
    assert os.listdir(os.path.join(cache, "tmp")) == [] if os.path.isdir(os.path.join(cache, "tmp")) else True


def case_args_named(case: Case, folder: str) -> list[str]:
    """What the error line must name: a file of the case or an option it was given."""
    files = [os.path.join(folder, n) for n in re.findall(r"\{([^}]+)\}", " ".join(case.args)) if n != "module"]
    options = [a for a in case.args if a.startswith("-")]
    return files + options + ["'node_", "'mystery'"]


CASES = sorted(corpus("module.so"))


@pytest.mark.parametrize("name", CASES)
def test_bad_input(name, tmp_path, module, cache):
    case = corpus(module)[name]
    folder = str(tmp_path / "case")
    args = prepare(case, folder, module)
    before = snapshot(folder)
    result = run_forked(args, cache, folder)
    check(case, result, before, folder, cache)


def test_fresh_processes_agree(tmp_path, module, cache):
    """A few cases as genuine ``python -m bnn_tvm`` processes (at once: each spends seconds importing)."""
    from concurrent.futures import ThreadPoolExecutor

    names = ["model_unknown_op", "input_empty_batch", "option_output_not_npy"]
    cases = {name: corpus(module)[name] for name in names}
    folders = {name: str(tmp_path / name) for name in names}
    args = {name: prepare(cases[name], folders[name], module) for name in names}
    before = {name: snapshot(folders[name]) for name in names}
    with ThreadPoolExecutor(len(names)) as pool:
        results = dict(zip(names, pool.map(lambda name: run_fresh(args[name], cache), names)))
    for name in names:
        check(cases[name], results[name], before[name], folders[name], cache)
