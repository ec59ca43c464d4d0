"""Running a standalone library (``compile --standalone``): ctypes here, ``bnn_runner`` under qemu.

A library built for this machine is loaded with ctypes and called through its C API
(``standalone_files/bnn_model.h``). One built for ARM runs under qemu-user through
``standalone_files/bnn_runner.c``, cross-compiled once per architecture into the cache: the
same C API, driven by a small program instead of Python, since an ARM library cannot be loaded
into this x86 process. Both present ``CompiledRunner``'s interface (``metadata``,
``input_shape``, ``run``: ``chunked.ChunkedRunner``), so ``run`` and ``verify`` use them as they
use a TVM module.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import subprocess
import tempfile

import numpy as np

from ..errors import BnnError
from .chunked import ChunkedRunner
from .standalone import API_SYMBOL, FILES, gcc_of
from bnn_tvm.targets import elf
from bnn_tvm.targets.qemu_user import qemu_command, run_emulated
from bnn_tvm import targets
from ..cache import cache_dir
from ..atomic_files import atomic_write

RUNNER_SOURCE = os.path.join(FILES, "bnn_runner.c")
# ELF machine -> the built-in target whose qemu, CPU model and sysroot run its libraries here
EMULATED_TARGETS = {40: "rasp3b-armv7", 183: "aarch64"}


def is_standalone(path: str) -> bool:
    """Whether ``path`` is a standalone library: it exports ``bnn_model_run_all`` (read from its
    ELF symbol table, so that an ARM library is recognised on x86 too)."""
    try:
        return API_SYMBOL in elf.dynamic_symbols(path)
    except Exception:  # noqa: BLE001 (not ELF, cut short: not a standalone library)
        return False


def dtype_of(name: str) -> np.dtype:
    return np.dtype("bool" if name == "bool" else name)


class StandaloneRunner(ChunkedRunner):
    """A standalone library behind ``CompiledRunner``'s interface (no Relax VM)."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.device = None
        machine = elf.read_header(path).machine
        # None: a library for this machine; else the target whose qemu-user runs it here
        self.emulated = None if machine == elf.HOST_ELF_MACHINES.get(platform.machine().lower()) else emulated_target(path, machine)
        info = self._info_ctypes() if self.emulated is None else self._info_emulated()
        self.metadata = info["metadata"]
        self.input_shape = tuple(info["input_shape"])
        self.output_shapes = [tuple(o["shape"]) for o in info["outputs"]]
        self.output_dtypes = [dtype_of(o["dtype"]) for o in info["outputs"]]

    @classmethod
    def load(cls, path: str) -> "StandaloneRunner":
        if not os.path.isfile(path):
            raise BnnError(f"no compiled module at {path}")
        return cls(path)

    # ---- this machine: ctypes --------------------------------------------------------------

    def _info_ctypes(self) -> dict:
        try:
            lib = ctypes.CDLL(self.path)
        except OSError as err:
            raise BnnError(f"{self.path}: cannot load the standalone library ({err})") from err
        int64_p = ctypes.POINTER(ctypes.c_int64)
        for name, restype in [("bnn_model_input_shape", int64_p), ("bnn_model_output_shape", int64_p),
                              ("bnn_model_output_dtype", ctypes.c_char_p), ("bnn_model_metadata", ctypes.c_char_p),
                              ("bnn_model_last_error", ctypes.c_char_p)]:
            getattr(lib, name).restype = restype
        lib.bnn_model_run_all.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
        self.lib = lib
        outputs = [{"shape": [lib.bnn_model_output_shape(i)[d] for d in range(lib.bnn_model_output_ndim(i))],
                    "dtype": lib.bnn_model_output_dtype(i).decode()} for i in range(lib.bnn_model_num_outputs())]
        shape = [lib.bnn_model_input_shape()[d] for d in range(lib.bnn_model_input_ndim())]
        return {"input_shape": shape, "outputs": outputs, "metadata": json.loads(lib.bnn_model_metadata())}

    def set_num_threads(self, threads: int) -> int:
        """Threads for the kernels' parallel loops (this machine only; ``run`` under qemu takes
        ``$BNN_NUM_THREADS``)."""
        return self.lib.bnn_model_set_num_threads(threads) if self.emulated is None else threads

    def _call(self, x: np.ndarray) -> list[np.ndarray]:
        outputs = [np.empty(shape, dtype) for shape, dtype in zip(self.output_shapes, self.output_dtypes)]
        pointers = (ctypes.c_void_p * len(outputs))(*[o.ctypes.data for o in outputs])
        x = np.ascontiguousarray(x, np.float32)
        if self.lib.bnn_model_run_all(x.ctypes.data, pointers) != 0:
            raise BnnError(f"{self.path}: {self.lib.bnn_model_last_error().decode(errors='replace')}")
        return outputs

    # ---- another architecture: bnn_runner under qemu ----------------------------------------

    def _info_emulated(self) -> dict:
        done = self._emulate(["--info"])
        try:
            return json.loads(done.stdout)
        except json.JSONDecodeError as err:
            raise BnnError(f"{self.path}: bnn_runner printed no model description: {done.stdout[:200]!r}") from err

    def _emulate(self, args: list[str], timeout: float = 3600) -> subprocess.CompletedProcess:
        """``bnn_runner`` (cross-compiled for the library's architecture) on this library under qemu."""
        return run_emulated(self.emulated, [runner_for(self.emulated), self.path, *args], self.path, timeout)

    def run(self, x: np.ndarray, source: str = "input") -> list[np.ndarray]:
        """As ``ChunkedRunner.run``; under qemu every chunk runs in one emulator process."""
        if self.emulated is None:
            return super().run(x, source)
        x = self.check_input(x, source)
        batch = self.input_shape[0]
        count = -(-len(x) // batch)
        padded = np.zeros((count * batch, *self.input_shape[1:]), np.float32)
        padded[: len(x)] = x
        with tempfile.TemporaryDirectory(prefix="bnn-runner-") as work:
            padded.tofile(os.path.join(work, "input.bin"))
            threads = os.environ.get("BNN_NUM_THREADS", "1")
            self._emulate([os.path.join(work, "input.bin"), os.path.join(work, "output"), str(count), threads])
            outputs = [np.fromfile(os.path.join(work, f"output{i}.bin"), dtype).reshape(count, *shape)
                       for i, (shape, dtype) in enumerate(zip(self.output_shapes, self.output_dtypes))]
        if count == 1 and len(x) == batch:
            return [o[0] for o in outputs]
        self._check_outputs_follow_batch([o[0] for o in outputs], len(x), source)
        return [o.reshape(count * o.shape[1], *o.shape[2:])[: len(x)] for o in outputs]


def emulated_target(path: str, machine: int):
    """The built-in target (``targets.TargetSpec``) whose qemu-user, CPU model and sysroot run a
    library of ELF ``machine`` here; a BnnError when there is none or its qemu is missing."""
    if machine not in EMULATED_TARGETS:
        raise BnnError(f"{path} was compiled for {elf.read_header(path).describe()}; this machine is "
                       f"{platform.machine()} and has no emulator for it")
    spec = targets.get(EMULATED_TARGETS[machine])
    qemu_command(spec, f"{path} (an {elf.MACHINE_NAMES[machine]} library)")  # installed: before building the runner
    return spec


def runner_for(spec) -> str:
    """``bnn_runner`` cross-compiled for ``spec`` into the cache (rebuilt when its source changes)."""
    gcc = gcc_of(spec)
    with open(RUNNER_SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read() + gcc.encode()).hexdigest()[:12]
    path = os.path.join(cache_dir(), "standalone", f"bnn_runner-{spec.isa}-{digest}")
    if os.path.isfile(path):
        return path

    def compile_runner(tmp: str) -> None:
        cmd = [gcc, "-O1", "-I", FILES, "-o", tmp, RUNNER_SOURCE, "-ldl"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise BnnError(f"building bnn_runner with {gcc} failed:\n{done.stderr[-2000:]}")

    atomic_write(path, compile_runner)
    os.chmod(path, 0o755)
    return path
