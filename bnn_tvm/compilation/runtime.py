"""Running a compiled module: the Relax VM over the shared library, any batch size (a standalone
library, ``compile --standalone``, through ``standalone_runtime``)."""

from __future__ import annotations

import json
import os
import threading

import numpy as np

from .chunked import ChunkedRunner
from .compiler import METADATA_FUNC
from .workspaces import PLANNED_FUNC, WORKSPACES_FUNC
from .standalone_runtime import StandaloneRunner, is_standalone
from ..errors import BnnError
from bnn_tvm.schedules.cuda import install_nvcc_callback
from bnn_tvm.targets import elf


def has_cuda_code(module) -> bool:
    """Whether a compiled module (executable or loaded library) holds CUDA kernels."""
    pending = [getattr(module, "mod", module)]
    while pending:
        current = pending.pop()
        if current.kind == "cuda":
            return True
        pending.extend(current.imports)
    return False


def check_runs_here(spec, remote: bool) -> None:
    """CPU targets run here or on a board (``remote``: over RPC); CUDA targets on this host's GPU."""
    if spec.family == "cuda":
        import tvm

        if remote:
            raise BnnError(f"target {spec.name}: --rpc/--tracker/--count-instructions are for boards; "
                           "a CUDA target runs on this host's GPU")
        if not tvm.cuda(0).exist:
            raise BnnError(f"target {spec.name} needs an NVIDIA GPU here (tvm.cuda(0).exist is False)")
    elif not spec.is_host and not remote:
        raise BnnError(f"target {spec.name} does not run on this host: give --rpc HOST:PORT or --tracker HOST:PORT --key KEY")


def module_device(module):
    """The device a module's kernels run on: the first CUDA GPU for CUDA kernels, else the CPU."""
    import tvm

    if not has_cuda_code(module):
        return tvm.cpu()
    if not tvm.cuda(0).exist:
        raise BnnError("the module was compiled for CUDA, but no CUDA GPU is visible here (tvm.cuda(0).exist is False)")
    return tvm.cuda(0)


def prepare_cuda_loading() -> None:
    """A module compiled without a GPU carries CUDA source; TVM compiles it when the module is
    loaded, through the ``tvm_callback_cuda_compile`` callback: nvcc if installed, else TVM's
    NVRTC one (which needs the ``cuda-bindings`` package)."""
    import tvm

    if not tvm.cuda(0).exist:
        return

    if not install_nvcc_callback():
        import tvm.support.nvcc  # registers TVM's NVRTC callback


def check_built_for_this_machine(path: str) -> None:
    """A module for another architecture (an aarch64 board's on this x86 host) is named as such:
    the dynamic loader would only say "cannot open shared object file"."""
    import platform

    host = platform.machine()
    try:
        header = elf.read_header(path)
    except (BnnError, OSError, KeyError, IndexError, ValueError):  # not ELF, or cut short: the loader says
        return
    expected = elf.HOST_ELF_MACHINES.get(host.lower())
    if expected is not None and header.machine != expected:
        raise BnnError(f"{path} was compiled for {header.machine_name} ({header.describe()}); this machine is {host}: "
                       "run it on its board (`verify --rpc/--tracker`, `bench --rpc/--tracker`)")


class CompiledRunner(ChunkedRunner):
    """A TVM module in the Relax VM; a fixed-batch module runs on any batch (``ChunkedRunner``).

    A module built with static workspaces (``workspaces``) runs through ``bnn_main_planned`` on
    tensors made once here: the input tensor and the workspaces, bound to the call as the saved
    function ``PLANNED_CALL``, so a call copies the input in, runs the kernels and copies the
    outputs out. A lock makes calls from several threads take turns (the VM and the workspaces
    are this runner's). A module without them (built with ``BNN_STATIC_WORKSPACES=0``, or an
    older one) runs through ``main``."""

    PLANNED_CALL = "bnn_planned_call"

    def __init__(self, module, device=None):
        from tvm import relax

        self.device = device or module_device(module)
        self.vm = relax.VirtualMachine(module, self.device)
        self.metadata = json.loads(str(self.vm[METADATA_FUNC]()))
        self.input_shape = tuple(self.metadata["input_shape"])
        self._lock = threading.Lock()
        self.planned = self._bind_workspaces()

    def _bind_workspaces(self) -> bool:
        """Make the input tensor and the workspaces and save ``PLANNED_CALL``; False for a module
        without ``bnn_main_planned``."""
        import tvm

        if not self.vm.module.implements_function(PLANNED_FUNC):
            return False
        self._input = tvm.runtime.empty(self.input_shape, "float32", self.device)
        made = self.vm[WORKSPACES_FUNC]()
        self.vm.save_function(PLANNED_FUNC, self.PLANNED_CALL, self._input, *made)
        return True

    def timed_call(self, x: np.ndarray) -> tuple[str, tuple]:
        """``(function, arguments)``: the VM function ``run`` calls on one compiled batch ``x``
        (set as its input) and its arguments, for ``vm.time_evaluator``."""
        import tvm

        if self.planned:
            self._input.copyfrom(np.ascontiguousarray(x, dtype=np.float32))
            return self.PLANNED_CALL, ()
        return "main", (tvm.runtime.tensor(x, self.device),)

    @classmethod
    def load(cls, path: str) -> "CompiledRunner":
        import tvm

        if not os.path.isfile(path):
            raise BnnError(f"no compiled module at {path}")
        if is_standalone(path):  # compile --standalone: ctypes here, or bnn_runner under qemu
            return StandaloneRunner.load(path)
        check_built_for_this_machine(path)
        prepare_cuda_loading()
        try:
            module = tvm.runtime.load_module(path)
            return cls(module)
        except BnnError as err:
            raise BnnError(f"{path}: {err}") from err
        except Exception as err:
            if "load_from_bytes.cuda" in str(err):
                raise BnnError(
                    f"{path} holds CUDA kernels: it runs on a machine with an NVIDIA GPU and driver "
                    f"(none here: tvm.cuda(0).exist is False)"
                ) from err
            raise BnnError(f"{path} is not a bnn_tvm module ({err})") from err

    def _call(self, x: np.ndarray) -> list[np.ndarray]:
        with self._lock:  # the input tensor and the workspaces are shared by every call
            name, args = self.timed_call(x)
            result = self.vm[name](*args)
            outputs = [result] if hasattr(result, "numpy") else list(result)  # one tensor or a tuple
            return [o.numpy() for o in outputs]  # copied out: the next call overwrites the workspaces
