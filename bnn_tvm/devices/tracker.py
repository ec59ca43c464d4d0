"""A local TVM RPC tracker (``python -m tvm.exec.rpc_tracker``) run in the background, and queries.

Boards register with a tracker under a key; clients ask the tracker for a free board of a key.
The tracker runs in its own process group, recorded in a state file beside the boards'.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from .processes import forget_stale, kill_group, parse_address, process_start, read_text, run_dir, still_ours, tail
from ..errors import BnnError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9190  # TVM's usual tracker port
TRACKER_MODULE = "tvm.exec.rpc_tracker"


@dataclass
class TrackerState:
    pid: int
    host: str
    port: int
    log: str
    pid_start: str | None = None  # processes.process_start(pid) when started; None in older state files

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _state_path(port: int) -> str:
    return os.path.join(run_dir(), f"tracker-{port}.json")


def running() -> list[TrackerState]:
    states = []
    for entry in sorted(os.listdir(run_dir())):
        if entry.startswith("tracker-") and entry.endswith(".json"):
            path = os.path.join(run_dir(), entry)
            state = TrackerState(**json.loads(read_text(path) or "{}"))
            if still_ours(state.pid, state.pid_start, TRACKER_MODULE):
                states.append(state)
            else:  # it died, or its pid went to another process: forget it, signal nothing
                forget_stale(path, f"tracker on port {state.port}", state.pid)
    return states


def _tracker_socket(address: tuple[str, int], timeout: float) -> socket.socket:
    """A connection that has passed the tracker handshake, or a BnnError saying why not."""
    from tvm.rpc import base

    host, port = address
    try:
        sock = socket.create_connection(address, timeout=timeout)
    except OSError as err:
        raise BnnError(
            f"RPC tracker {host}:{port} unreachable ({err.strerror or err}); "
            "start one with `python -m bnn_tvm tracker start`"
        ) from err
    try:
        sock.settimeout(timeout)
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        magic = struct.unpack("<i", base.recvall(sock, 4))[0]
    except (OSError, RuntimeError) as err:
        sock.close()
        raise BnnError(f"{host}:{port} does not answer as an RPC tracker ({err})") from err
    if magic != base.RPC_TRACKER_MAGIC:
        sock.close()
        raise BnnError(f"{host}:{port} is not an RPC tracker")
    return sock


def summary(address: tuple[str, int], timeout: float = 10) -> dict:
    """The tracker's summary: ``server_info`` (registered servers) and ``queue_info`` per key."""
    from tvm.rpc import base

    sock = _tracker_socket(address, timeout)
    try:
        base.sendjson(sock, [base.TrackerCode.SUMMARY])
        code, value = base.recvjson(sock)
    except (OSError, RuntimeError, ValueError) as err:
        raise BnnError(f"RPC tracker {address[0]}:{address[1]} did not answer a summary ({err})") from err
    finally:
        sock.close()
    if code != base.TrackerCode.SUCCESS:
        raise BnnError(f"RPC tracker {address[0]}:{address[1]} refused a summary ({code})")
    return value


def tracker_keys(address: tuple[str, int], timeout: float = 10) -> dict[str, int]:
    """Keys of the servers registered with the tracker, each with how many of them are free now."""
    info = summary(address, timeout)
    keys = {item["key"].split(":", 1)[1]: 0 for item in info["server_info"] if item["key"].startswith("server:")}
    for key in keys:
        keys[key] = info["queue_info"].get(key, {}).get("free", 0)
    return keys


def start(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, timeout: float = 60) -> TrackerState:
    for state in running():
        if state.port == port:
            raise BnnError(f"a tracker already runs on {state.address} (pid {state.pid}); "
                           "`python -m bnn_tvm tracker stop` ends it")
    try:
        with socket.create_connection((host, port), timeout=1):
            raise BnnError(f"{host}:{port} is already in use by another program; pick --port")
    except OSError:
        pass
    log = os.path.join(run_dir(), f"tracker-{port}.log")
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")  # the tracker needs no compiler
    cmd = [sys.executable, "-m", TRACKER_MODULE, "--host", host, "--port", str(port),
           "--port-end", str(port + 1)]
    with open(log, "w") as log_file:
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise BnnError(f"the RPC tracker exited (code {proc.returncode}):\n{tail(log)}")
        try:
            summary((host, port), timeout=2)
            break
        except BnnError:
            if time.monotonic() > deadline:
                kill_group(proc.pid)
                raise BnnError(f"the RPC tracker did not answer on {host}:{port} within {timeout:.0f} s:\n{tail(log)}")
            time.sleep(0.2)
    state = TrackerState(proc.pid, host, port, log, process_start(proc.pid))
    with open(_state_path(port), "w") as f:
        json.dump(asdict(state), f)
    return state


def stop(port: int | None = None) -> list[TrackerState]:
    states = [s for s in running() if port is None or s.port == port]
    if port is not None and not states:
        raise BnnError(f"no tracker started by bnn_tvm runs on port {port}")
    for state in states:
        kill_group(state.pid)
        path = _state_path(state.port)
        if os.path.exists(path):
            os.remove(path)
    return states


def address(text: str | None) -> tuple[str, int]:
    return parse_address(text, "--tracker") if text else (DEFAULT_HOST, DEFAULT_PORT)
