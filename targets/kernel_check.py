"""Run a cross-compiled module's binary kernels under qemu-user and compare them with x86.

For targets without a TVM runtime to run whole models (rasp3b-armv7: PyPI has no armv7 wheel),
the kernels alone still run: ``kernel_runner.c`` (cross-compiled here) dlopens the module under
qemu and calls each kernel with the arguments the x86 build of the same model was called with
(recorded with the Relax VM's instrument hook on real inputs).  Every argument is compared bit
for bit afterwards, outputs included.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

import numpy as np

from bnn_tvm.errors import BnnError

from . import TargetSpec, get
from .qemu_user import run_emulated
from bnn_tvm import schedules

RUNNER_SOURCE = os.path.join(os.path.dirname(__file__), "kernel_runner.c")
BINARY_KERNEL_PREFIX = "bnn_"  # relay_passes name the binary PrimFuncs bnn_<op>
DLPACK_CODES = {"i": 0, "u": 1, "f": 2}


@dataclass
class KernelCall:
    symbol: str
    before: list  # numpy copies of every argument before the call
    after: list  # and after it (outputs written)


@dataclass
class KernelResult:
    symbol: str
    shapes: list
    identical: bool
    differing: int  # bytes that differ, over all arguments


@dataclass
class KernelReport:
    target: str
    results: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.identical for r in self.results)

    def lines(self) -> list[str]:
        return [
            f"{r.symbol} {' '.join('x'.join(map(str, s)) for s in r.shapes)}: "
            + ("identical" if r.identical else f"{r.differing} bytes differ")
            for r in self.results
        ]


def record_kernel_calls(module_path: str, x: np.ndarray, prefix: str = BINARY_KERNEL_PREFIX) -> list[KernelCall]:
    """The calls of kernels named ``prefix*`` when the (host) module runs on ``x``."""
    from bnn_tvm.compilation.runtime import CompiledRunner

    runner = CompiledRunner.load(module_path)
    calls: list[KernelCall] = []
    pending: dict[str, list] = {}

    def instrument(func, symbol, before_run, ret_value, *args):
        symbol = str(symbol)
        # Kernels take tensors only; VM builtins (vm.builtin.*) take shapes, storage and ints.
        if symbol.startswith(prefix) and not symbol.startswith("vm.") and all(hasattr(a, "numpy") for a in args):
            copies = [a.numpy().copy() for a in args]
            if before_run:
                pending[symbol] = copies
            else:
                calls.append(KernelCall(symbol, pending.pop(symbol), copies))
        return 0  # VMInstrumentReturnKind.NO_OP

    runner.vm.set_instrument(instrument)
    runner.run(x)
    return calls


def target_constants(model_path: str, target: str, batch: int | None = None) -> dict[str, dict[int, np.ndarray]]:
    """Per binary kernel, its constant arguments (weights, thresholds) as ``target``'s schedules
    lay them out: the layouts differ between targets (vector widths), so a kernel replayed on
    another target takes the activations recorded on the host with the target's own constants.
    Lowered like ``compile`` lowers ``model_path`` (same passes, same kernel names)."""
    from bnn_tvm.compilation.compiler import lower_onnx
    from tvm import relax
    from tvm.ir import Constant

    mod = schedules.schedule_module(lower_onnx(model_path, batch, target=target).mod, get(target))
    constants: dict[str, dict[int, np.ndarray]] = {}
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            call = binding.value
            if not (isinstance(call, relax.Call) and isinstance(call.args[0], relax.GlobalVar)):
                continue
            symbol = call.args[0].name_hint
            if symbol.startswith(BINARY_KERNEL_PREFIX) and isinstance(call.args[1], relax.Tuple):
                for i, arg in enumerate(call.args[1].fields):
                    if isinstance(arg, Constant):
                        constants.setdefault(symbol, {})[i] = arg.value.numpy()
    return constants


def build_runner(spec: TargetSpec, out_dir: str) -> str:
    import tvm_ffi

    gcc = spec.cross_compiler.replace("g++", "gcc") if spec.cross_compiler else None
    if not gcc or shutil.which(gcc) is None:
        raise BnnError(f"target {spec.name} needs the cross compiler {gcc}: apt-get install {spec.apt_package}")
    include = os.path.join(os.path.dirname(tvm_ffi.__file__), "include")
    exe = os.path.join(out_dir, "kernel_runner")
    cmd = [gcc, "-O1", "-rdynamic", "-I", include, "-o", exe, RUNNER_SOURCE, "-ldl"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise BnnError(f"building the kernel runner for {spec.name} failed:\n{done.stderr[-2000:]}")
    return exe


def _write_case(case_dir: str, call: KernelCall) -> None:
    os.makedirs(case_dir)
    lines = [f"{call.symbol} {len(call.before)}"]
    for i, arg in enumerate(call.before):
        if arg.dtype.kind not in DLPACK_CODES:
            raise BnnError(f"kernel {call.symbol}: argument {i} has dtype {arg.dtype}, not supported by the runner")
        lines.append(" ".join(map(str, [DLPACK_CODES[arg.dtype.kind], arg.dtype.itemsize * 8, arg.ndim, *arg.shape])))
        np.ascontiguousarray(arg).tofile(os.path.join(case_dir, f"arg{i}.bin"))
    with open(os.path.join(case_dir, "case.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def run_case(spec: TargetSpec, runner: str, module_path: str, case_dir: str, timeout: float = 120) -> None:
    """The kernel runner under qemu on the case in ``case_dir`` (it writes the arguments after the call there)."""
    run_emulated(spec, [runner, os.path.abspath(module_path), case_dir], f"kernel case {case_dir}", timeout)


def check_kernels(
    host_module: str,
    target_module: str,
    target: str,
    x: np.ndarray,
    calls: list[KernelCall] | None = None,
    constants: dict[str, dict[int, np.ndarray]] | None = None,
) -> KernelReport:
    """Run ``target_module``'s binary kernels under qemu on the arguments of ``host_module``'s run.

    ``calls`` (from ``record_kernel_calls``) replaces the recording, e.g. to check the checker;
    ``constants`` (from ``target_constants``) gives the target's own layout of the constant
    arguments, which replace the host's (a kernel does not write its constants).
    """
    spec = get(target)
    calls = record_kernel_calls(host_module, x) if calls is None else calls
    for call in calls:
        for i, value in (constants or {}).get(call.symbol, {}).items():
            call.before[i] = call.after[i] = value
    if not calls:
        raise BnnError(f"{host_module}: the model calls no binary kernel ({BINARY_KERNEL_PREFIX}*)")
    report = KernelReport(spec.name)
    with tempfile.TemporaryDirectory(prefix="bnn-kernels-") as work:
        runner = build_runner(spec, work)
        for n, call in enumerate(calls):
            case_dir = os.path.join(work, f"case{n}")
            _write_case(case_dir, call)
            run_case(spec, runner, target_module, case_dir)
            differing = 0
            for i, expected in enumerate(call.after):
                got = np.fromfile(os.path.join(case_dir, f"arg{i}.out"), dtype=expected.dtype).reshape(expected.shape)
                differing += int(np.sum(got.view(np.uint8) != np.ascontiguousarray(expected).view(np.uint8)))
            report.results.append(KernelResult(call.symbol, [a.shape for a in call.before], differing == 0, differing))
    return report
