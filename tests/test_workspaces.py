"""Static workspaces (``bnn_tvm.compilation.workspaces``): a compiled module's tensors are made
once per runner, so that a call through ``CompiledRunner`` runs the kernels and nothing else."""

import threading

import numpy as np
import pytest
import tvm
from tvm import relax

from bnn_tvm import targets
from bnn_tvm.compilation import workspaces
from bnn_tvm.compilation.compiler import compile_onnx
from bnn_tvm.compilation.runtime import CompiledRunner
from bnn_tvm.frontend.export import resolve_model

# the VM builtins a planned call may run: the checks of its input
INPUT_CHECKS = {"vm.builtin.check_tensor_info", "vm.builtin.match_shape"}


@pytest.fixture(scope="module")
def dfsmn():
    return compile_onnx(resolve_model("dfsmn"), "x86")


def calls_of(runner: CompiledRunner, name: str, args) -> list[str]:
    """The symbols of every function the VM calls in one call of ``name`` (as ``tools/kernel_times.py``
    times them)."""
    called = []

    def instrument(func, symbol, before, ret, *_args):
        if before:
            called.append(str(symbol))
        return 0

    runner.vm.set_instrument(instrument)
    runner.vm[name](*args)
    return called


def test_a_planned_call_runs_only_the_kernels(dfsmn):
    runner = CompiledRunner(dfsmn.executable)
    x = np.random.default_rng(0).standard_normal(runner.input_shape).astype("float32")
    name, args = runner.timed_call(x)
    assert runner.planned and name == CompiledRunner.PLANNED_CALL
    planned = calls_of(runner, name, args)
    builtins = {symbol for symbol in planned if symbol.startswith("vm.builtin.")}
    assert builtins <= INPUT_CHECKS, f"per-call VM builtins came back: {sorted(builtins - INPUT_CHECKS)}"
    # main, as TVM compiles it, makes its tensors on every call (what the planned call saves) and
    # calls the same kernels in the same order
    fresh = calls_of(CompiledRunner(dfsmn.executable), "main", (tvm.runtime.tensor(x),))
    assert fresh.count("vm.builtin.alloc_tensor") > 50 and "vm.builtin.null_value" in fresh
    kernels = [symbol for symbol in fresh if not symbol.startswith("vm.builtin.")]
    assert [symbol for symbol in planned if symbol not in INPUT_CHECKS] == kernels and len(kernels) == 58


def test_outputs_match_main_and_are_copied_out(dfsmn):
    runner = CompiledRunner(dfsmn.executable)
    rng = np.random.default_rng(1)
    first, second = (rng.standard_normal(runner.input_shape).astype("float32") for _ in range(2))
    expected = [runner.vm["main"](tvm.runtime.tensor(x)).numpy() for x in (first, second)]
    returned = runner.run(first)[0]
    kept = returned.copy()
    assert np.array_equal(returned, expected[0])
    assert np.array_equal(runner.run(second)[0], expected[1])
    assert np.array_equal(returned, kept)  # the second call did not write into the first's result
    assert not np.array_equal(expected[0], expected[1])


def test_calls_from_several_threads_take_turns(dfsmn):
    runner = CompiledRunner(dfsmn.executable)
    rng = np.random.default_rng(2)
    inputs = [rng.standard_normal(runner.input_shape).astype("float32") for _ in range(4)]
    expected = [runner.vm["main"](tvm.runtime.tensor(x)).numpy() for x in inputs]
    wrong = []

    def worker(index: int) -> None:
        for _ in range(25):
            if not np.array_equal(runner.run(inputs[index])[0], expected[index]):
                wrong.append(index)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not wrong


@pytest.mark.parametrize("target_name", ["x86", "cuda"])
def test_main_is_what_tvms_default_pipeline_compiles(target_name):
    """The pipeline is the one ``tvm.compile`` runs for the target with the lift added: ``main``
    comes out the same (so a TVM release that changes its pipeline shows here), and the two
    functions appear beside it. CUDA compiles without a GPU."""
    from bnn_tvm import schedules
    from bnn_tvm.compilation.compiler import lower_onnx

    spec = targets.get(target_name)
    mod = schedules.schedule_module(lower_onnx(resolve_model(None), target=target_name).mod, spec)
    target = spec.tvm_target()
    lifted = []

    @tvm.instrument.pass_instrument
    class WellFormedAfterLift:
        def run_after_pass(self, mod, info):
            if info.name == "LiftWorkspaces":
                relax.analysis.well_formed(mod)  # raises on the first violation
                lifted.append(mod)

    with target:
        default = (relax.get_default_pipeline(target) if spec.family == "cuda" else relax.get_pipeline("default"))(mod)
        with tvm.transform.PassContext(instruments=[WellFormedAfterLift()]):
            ours = workspaces.build_pipeline(target)(mod)
    assert len(lifted) == 1
    assert default["main"].script() == ours["main"].script()  # (the kernels are new GlobalVars in each)
    names = {gv.name_hint for gv in ours.functions}
    assert {workspaces.WORKSPACES_FUNC, workspaces.PLANNED_FUNC} <= names


def test_switched_off_the_runner_calls_main(monkeypatch):
    monkeypatch.setenv("BNN_STATIC_WORKSPACES", "0")
    compiled = compile_onnx(resolve_model(None), "x86")
    runner = CompiledRunner(compiled.executable)
    assert not runner.planned and not runner.vm.module.implements_function(workspaces.PLANNED_FUNC)
    x = np.random.default_rng(3).standard_normal((5, *runner.input_shape[1:])).astype("float32")
    monkeypatch.setenv("BNN_STATIC_WORKSPACES", "1")
    planned = CompiledRunner(compile_onnx(resolve_model(None), "x86").executable)
    assert planned.planned
    assert all(np.array_equal(a, b) for a, b in zip(runner.run(x), planned.run(x)))
