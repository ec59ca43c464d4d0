"""Builder and runner: candidates built (cross-compiled where needed) and timed here or over RPC."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

from ...devices.endpoint import Endpoint
from ...errors import BnnError
from .tasks import Task
from bnn_tvm import schedules


REPEATS = 9  # timed calls per candidate (each after a cache flush)


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


def connect_direct(endpoint: Endpoint, target: str, timeout: float, rpc_config):
    """``RPCRunner`` ``f_create_session`` for ``--rpc HOST:PORT`` (a server without a tracker):
    with ``--key`` if given, else the target name and then the empty key, as ``bench`` and
    ``verify`` connect (``Endpoint.connect_direct``)."""
    return endpoint.connect_direct(target, timeout)


@dataclass
class Measurer:
    builder: object
    runner: object
    where: str  # "this machine" | "key K of tracker H:P" | "RPC server H:P"
    artifacts: str  # folder of the built candidates' libraries, removed by ``close``

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.artifacts, ignore_errors=True)


def board_label(spec, endpoint: Endpoint) -> str:
    """Where candidates run; fails fast (clear error) when that board cannot be reached."""
    if endpoint.remote:
        endpoint.check_reachable(spec.name)
    elif not spec.is_host:
        raise BnnError(
            f"target {spec.name} runs on another machine: give --tracker HOST:PORT --key KEY "
            f"(or --rpc HOST:PORT) of a board (`python -m bnn_tvm board start --target {spec.name}`)"
        )
    return endpoint.label(spec.name)


def make_measurer(spec, timeout: float, endpoint: Endpoint) -> Measurer:
    import tempfile

    from tvm.s_tir import meta_schedule as ms

    where = board_label(spec, endpoint)
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
    if not endpoint.remote:
        runner = ms.runner.LocalRunner(timeout_sec=timeout, evaluator_config=evaluator, f_alloc_argument=alloc_local)
    elif endpoint.tracker is not None:
        host, port = endpoint.address
        config = ms.runner.RPCConfig(host, port, endpoint.keys(spec.name)[0], session_priority=1,
                                     session_timeout_sec=int(timeout))
        runner = ms.runner.RPCRunner(config, evaluator, f_alloc_argument=alloc_remote, max_workers=1)
    else:
        host, port = endpoint.address
        config = ms.runner.RPCConfig(host, port, "direct", session_timeout_sec=int(timeout))
        runner = ms.runner.RPCRunner(
            config, evaluator, f_alloc_argument=alloc_remote, max_workers=1,
            f_create_session=functools.partial(connect_direct, endpoint, spec.name, timeout),
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
    from bnn_tvm.schedules.tuning import workload

    if task.op is None:
        return task.func
    module = schedules.family_module(spec.family)
    fresh = workload(task.func)["main"].without_attr("global_symbol")  # the hand schedule may edit in place
    return module.schedule(fresh, task.op, spec.tvm_target()).func if module is not None else task.func
