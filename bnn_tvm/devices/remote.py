"""Benchmark a compiled module on a board over TVM RPC: upload, load in the Relax VM, run, time.
Or (``remote_ort_bench``) an ONNX model in the board's ONNX Runtime, through the emulated board's
``bnn.board.ort_bench`` function (``qemu_board/board_server.py``), timed and counted alike.

The RPC session runs in a worker process (``python -m bnn_tvm.devices.remote DIR``) that the caller
kills when its deadline passes: TVM's RPC client blocks in C++ socket reads without a timeout,
so a hung or stopped board could otherwise hang the caller forever.  The worker reports the
phase it is in, so a failure or a timeout says what was going on (connecting, uploading,
running, timing, counting).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from ..errors import BnnError
from .endpoint import Endpoint
from bnn_tvm.targets.elf import MACHINE_NAMES, read_header
from bnn_tvm import targets

DEFAULT_TIMEOUT_S = 300.0  # whole benchmark, emulated board included
# ONNX Runtime's instruction count varies by up to ~1.6 % from run to run (board_server.ort_bench):
# the median of this many counted runs is reported.
ORT_COUNTED_RUNS = 3
# A float ResNet-18 in ONNX Runtime takes 20-40 s a run under qemu: a first run, the timed ones
# (within bench's budget) and the counted ones take minutes.
ORT_TIMEOUT_S = 900.0
PHASES = {
    "start": "starting the RPC client",
    "connect": "connecting to the board",
    "upload": "uploading the module",
    "load": "loading the module on the board",
    "run": "running the model",
    "time": "timing the model",
    "count": "counting instructions",
    "done": "finishing",
}


def _check_module(module_path: str, spec) -> None:
    if not os.path.isfile(module_path):
        raise BnnError(f"no compiled module at {module_path}")
    header = read_header(module_path)
    if spec.elf_machine is not None and header.machine != spec.elf_machine:
        raise BnnError(
            f"{module_path} is built for {header.machine_name}, but target {spec.name} runs "
            f"{MACHINE_NAMES.get(spec.elf_machine, spec.isa)} code: compile it with --target {spec.name}"
        )


def remote_bench(
    module_path: str,
    spec,
    inputs,
    endpoint: Endpoint,
    repeat: int = 10,
    count_instructions: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> dict:
    """Run ``module_path`` on the board at ``endpoint``.

    Returns ``outputs`` (the model's outputs for all of ``inputs``, run chunk by chunk of the
    compiled batch), ``median_ms`` (median of ``repeat`` timed runs of one batch, timed on the
    board) and ``instructions`` (executed guest instructions of one run, emulated board only,
    else None).  Every failure raises BnnError within ``timeout`` seconds.
    """
    if isinstance(spec, str):
        spec = targets.get(spec)
    _check_module(module_path, spec)
    request = {"engine": "tvm", "module": os.path.abspath(module_path)}
    return _remote(request, spec, inputs, endpoint, repeat, count_instructions, timeout)


def remote_ort_bench(
    onnx_path: str,
    spec,
    inputs,
    endpoint: Endpoint,
    repeat: int = 10,
    count_instructions: bool = False,
    threads: int = 1,
    budget_s: float = 0.0,
    timeout: float = ORT_TIMEOUT_S,
) -> dict:
    """Run the ONNX model ``onnx_path`` in ONNX Runtime on the emulated board (its
    ``bnn.board.ort_bench``: CPU provider, all graph optimisations, ``threads`` intra-op
    threads), on one batch ``inputs`` as the model takes it; ``repeat`` timed runs, fewer (at
    least one) once they took ``budget_s`` seconds if that is positive. Returns what ``remote_bench``
    returns, with ``ort_version`` and ``instruction_samples``: each count brackets one
    ``session.run`` the way ``remote_bench`` brackets one call of the compiled model, and
    ``instructions`` is the median of ``ORT_COUNTED_RUNS`` of them (ONNX Runtime's count varies
    a little from run to run; a TVM module's does not)."""
    import onnx

    from ..frontend.onnx_import import external_data_files

    if isinstance(spec, str):
        spec = targets.get(spec)
    if spec.isa != "aarch64":
        raise BnnError(f"ONNX Runtime on a board: the board's root has the aarch64 build only; target {spec.name} "
                       f"runs {spec.isa} code")
    if not os.path.isfile(onnx_path):
        raise BnnError(f"no ONNX model at {onnx_path}")
    folder = os.path.dirname(os.path.abspath(onnx_path))
    extra = [os.path.join(folder, f) for f in external_data_files(onnx.load(onnx_path, load_external_data=False))]
    request = {"engine": "ort", "module": os.path.abspath(onnx_path), "files": extra, "threads": int(threads),
               "budget_s": float(budget_s)}
    return _remote(request, spec, inputs, endpoint, repeat, count_instructions, timeout)


def _remote(request, spec, inputs, endpoint: Endpoint, repeat, count_instructions, timeout) -> dict:
    if not endpoint.remote:
        raise BnnError("remote benchmark: give --rpc HOST:PORT or --tracker HOST:PORT")
    x = inputs[0] if isinstance(inputs, list | tuple) else inputs
    x = np.ascontiguousarray(x, dtype=np.float32)
    endpoint.check_reachable(spec.name)
    where = endpoint.label(spec.name)
    request = {
        **request,
        "rpc": endpoint.rpc,
        "tracker": endpoint.tracker,
        "key": endpoint.key,
        "target": spec.name,
        "repeat": int(repeat),
        "count_instructions": bool(count_instructions),
        "session_timeout": float(timeout),
    }
    with tempfile.TemporaryDirectory(prefix="bnn-remote-") as work:
        with open(os.path.join(work, "request.json"), "w") as f:
            json.dump(request, f)
        np.save(os.path.join(work, "inputs.npy"), x)
        _run_worker(work, timeout, where)
        with open(os.path.join(work, "result.json")) as f:
            result = json.load(f)
        with np.load(os.path.join(work, "outputs.npz")) as data:
            outputs = [data[f"out{i}"] for i in range(len(data.files))]
    result["outputs"] = outputs
    return result


def _run_worker(work: str, timeout: float, where: str) -> None:
    cmd = [sys.executable, "-m", "bnn_tvm.devices.remote", work]
    log_path = os.path.join(work, "worker.log")
    with open(log_path, "w") as log:
        # Own process group, so that a timeout ends the worker and anything it started.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=dict(os.environ, TVM_USE_RUNTIME_LIB="1"))
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        phase = PHASES.get(_read_phase(work), "starting")
        raise BnnError(f"remote benchmark on {where}: no answer within {timeout:.0f} s while {phase}; "
                       "is the board busy, stopped or too slow? (raise --timeout)") from None
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    error_path = os.path.join(work, "error.json")
    if os.path.exists(error_path):
        with open(error_path) as f:
            error = json.load(f)
        raise BnnError(f"remote benchmark on {where}: {error['message']}")
    if proc.returncode != 0 or not os.path.exists(os.path.join(work, "result.json")):
        with open(log_path) as f:
            tail = "\n".join(f.read().strip().splitlines()[-10:])
        phase = PHASES.get(_read_phase(work), "starting")
        raise BnnError(f"remote benchmark on {where}: the RPC client died (code {proc.returncode}) while {phase}:\n{tail}")


def _read_phase(work: str) -> str:
    try:
        with open(os.path.join(work, "phase")) as f:
            return f.read().strip()
    except OSError:
        return "start"


# ---------------------------------------------------------------------------------------------
# The worker process


class _Session:
    """One RPC session with the board; ``phase()`` records progress for the parent."""

    def __init__(self, work: str, request: dict):
        self.work = work
        self.request = request
        self.endpoint = Endpoint(request["rpc"], request["tracker"], request["key"])
        self.where = self.endpoint.label(request["target"])

    def phase(self, name: str) -> None:
        with open(os.path.join(self.work, "phase"), "w") as f:
            f.write(name)
        self.current = name

    def connect(self):
        from tvm import rpc

        self.phase("connect")
        session_timeout = self.request["session_timeout"]
        if self.endpoint.rpc is not None:
            return self.endpoint.connect_direct(self.request["target"], session_timeout)
        key = self.endpoint.keys(self.request["target"])[0]
        return rpc.connect_tracker(*self.endpoint.address).request(key, session_timeout=session_timeout, max_retry=1)

    def run(self) -> tuple[dict, list[np.ndarray]]:
        if self.request.get("engine") == "ort":
            return self.run_ort()
        return self.run_tvm()

    def run_ort(self) -> tuple[dict, list[np.ndarray]]:
        """The ONNX model in the board's ONNX Runtime (``board_server.ort_bench``)."""
        import io

        remote = self.connect()
        try:
            ort_bench = remote.get_function("bnn.board.ort_bench")
        except Exception as err:
            raise BnnError(
                f"{self.where} cannot run ONNX Runtime: only the emulated board (`python -m bnn_tvm board start`) "
                "has the function that does (bnn.board.ort_bench)"
            ) from err
        self.phase("upload")
        model = self.request["module"]
        remote.upload(model, target="model.onnx")
        for path in self.request.get("files", []):  # external tensor data, beside the model
            remote.upload(path, target=os.path.basename(path))
        buffer = io.BytesIO()
        np.save(buffer, np.load(os.path.join(self.work, "inputs.npy")))
        remote.upload(bytearray(buffer.getvalue()), target="input.npy")
        self.phase("run")  # and timing, and counting: one call on the board
        counted_runs = ORT_COUNTED_RUNS if self.request["count_instructions"] else 0
        info = json.loads(str(ort_bench("model.onnx", "input.npy", "outputs.npz", self.request["threads"],
                                        self.request["repeat"], counted_runs, self.request["budget_s"])))
        self.phase("done")
        with np.load(io.BytesIO(bytes(remote.download("outputs.npz")))) as data:
            outputs = [data[f"out{i}"] for i in range(len(data.files))]
        times = info["times_ms"]
        result = {
            "median_ms": float(np.median(times)) if times else None,
            "times_ms": times,
            "instructions": info["instructions"],
            "instruction_samples": info.get("instruction_samples") or None,
            "ort_version": info["version"],
            "board": self.board_info(remote),
        }
        return result, outputs

    def run_tvm(self) -> tuple[dict, list[np.ndarray]]:
        import tvm
        from tvm.runtime.vm import VirtualMachine

        remote = self.connect()
        self.phase("upload")
        module = self.request["module"]
        remote.upload(module)
        self.phase("load")
        rmod = remote.load_module(os.path.basename(module))
        dev = remote.cpu()
        vm = VirtualMachine(rmod, dev)
        metadata = json.loads(str(vm["bnn_metadata"]()))
        batch_shape = tuple(metadata["input_shape"])
        x = np.load(os.path.join(self.work, "inputs.npy"))
        if x.shape[1:] != batch_shape[1:]:
            raise BnnError(f"input shape {x.shape} does not match the model's (N, {', '.join(map(str, batch_shape[1:]))})")
        self.phase("run")
        chunks = []
        for start in range(0, len(x), batch_shape[0]):
            part = x[start : start + batch_shape[0]]
            padded = np.zeros(batch_shape, np.float32)
            padded[: len(part)] = part
            vm.set_input("main", tvm.runtime.tensor(padded, dev))
            vm.invoke_stateful("main")
            result = vm.get_outputs("main")
            outputs = [result] if hasattr(result, "numpy") else list(result)
            if len(x) != batch_shape[0] and any(o.numpy().ndim == 0 or o.shape[0] != batch_shape[0] for o in outputs):
                raise BnnError(f"{len(x)} inputs, but the module takes exactly {batch_shape[0]} at a time: an output's "
                               f"first axis is not the batch, so it cannot be run in chunks")
            chunks.append([o.numpy()[: len(part)] for o in outputs])
        outputs = [np.concatenate(parts) for parts in zip(*chunks)]
        self.phase("time")  # the last batch is still set as input
        timer = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=self.request["repeat"])
        timing = timer("main")
        instructions = None
        if self.request["count_instructions"]:
            self.phase("count")
            instructions = self.count(remote, vm)
        self.phase("done")
        info = {
            "median_ms": float(timing.median) * 1e3,
            "times_ms": [float(t) * 1e3 for t in timing.results],
            "instructions": instructions,
            "board": self.board_info(remote),
        }
        return info, outputs

    def count(self, remote, vm) -> int:
        try:
            counter = remote.get_function("bnn.board.count_instructions")
        except Exception as err:
            raise BnnError(
                f"{self.where} cannot count instructions: only the emulated board "
                "(`python -m bnn_tvm board start`) has the counting plugin"
            ) from err
        return int(counter(vm.module, "invoke_stateful", "main"))

    @staticmethod
    def board_info(remote) -> dict | None:
        try:
            return json.loads(str(remote.get_function("bnn.board.info")()))
        except Exception:  # a real board has no such function
            return None


def _explain(err: Exception, session: _Session) -> str:
    """A message for a failure of the RPC session: what was going on and the likely cause."""
    text = str(err).strip()
    last = text.splitlines()[-1] if text else type(err).__name__
    phase = PHASES.get(getattr(session, "current", "start"), "starting")
    lowered = text.lower()
    if isinstance(err, BnnError):
        return str(err)
    if session.current == "connect" and ("refused" in lowered or "connect" in lowered):
        return f"cannot connect ({last}); is the board running? (`python -m bnn_tvm board start`)"
    if "matches key" in lowered:
        return (
            f"the RPC server answers to another key ({last}); give --key KEY, or use --tracker "
            "HOST:PORT --key KEY if the server is registered with a tracker (it then accepts only "
            "clients the tracker sends)"
        )
    if "rpcsessiontimeouterror" in lowered:
        return f"the board ended the session at its time limit while {phase} ({last})"
    closed = ("kshutdown" in lowered or "closed" in lowered or "reset" in lowered or "broken pipe" in lowered or "eof" in lowered
              or "recv" in lowered or "socket" in lowered)
    if closed:
        return f"the connection to the board was lost while {phase} (server killed or crashed?): {last}"
    return f"failed while {phase}: {last}"


def _worker(work: str) -> int:
    with open(os.path.join(work, "request.json")) as f:
        request = json.load(f)
    session = _Session(work, request)
    session.phase("start")
    try:
        info, outputs = session.run()
    except Exception as err:  # every failure becomes one clear line for the caller
        with open(os.path.join(work, "error.json"), "w") as f:
            json.dump({"message": _explain(err, session), "detail": str(err)}, f)
        return 1
    np.savez(os.path.join(work, "outputs.npz"), **{f"out{i}": o for i, o in enumerate(outputs)})
    with open(os.path.join(work, "result.json"), "w") as f:
        json.dump(info, f)
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    sys.exit(_worker(sys.argv[1]))
