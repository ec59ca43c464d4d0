"""Processes this project starts and finds again from later CLI calls (the emulated board, the
RPC tracker): their state files (``run_dir``), whether a recorded pid is still ours, stopping a
process group; and ``HOST:PORT`` addresses."""

from __future__ import annotations

import os
import signal
import time

from ..cache import cache_dir
from ..errors import BnnError


def run_dir() -> str:
    path = os.path.join(cache_dir(), "run")
    os.makedirs(path, exist_ok=True)
    return path

def read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None

def tail(path: str, lines: int = 12) -> str:
    text = read_text(path) or ""
    return "\n".join(text.splitlines()[-lines:])

def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) counts as gone; reap it if it is ours.
    try:
        with open(f"/proc/{pid}/stat") as f:
            zombie = f.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True
    if zombie:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    return not zombie


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, field 22 of /proc/PID/stat): with the
    pid it names one process, where the pid alone may since have been given to another."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the command name may hold spaces
    except (OSError, IndexError):
        return None
    return fields[19] if len(fields) > 19 else None  # fields[0] is field 3


def process_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def still_ours(pid: int, pid_start: str | None, marker: str) -> bool:
    """Whether ``pid`` is still the process a state file recorded: alive and started when it was
    (state files written before start times were recorded: its command line holds ``marker``).
    A state file left by a crash may name a pid the system has since given to an unrelated
    process, whose process group must not be signalled."""
    if not alive(pid):
        return False
    if pid_start is not None:
        return process_start(pid) == pid_start
    return marker in process_cmdline(pid)


def forget_stale(path: str, what: str, pid: int) -> None:
    """Remove the state file of a process that is gone or is no longer ours, saying so."""
    reason = "has exited" if not alive(pid) else "now belongs to another program"
    print(f"note: removed the stale state file {path}: the {what}'s process {pid} {reason}; nothing was signalled")
    os.remove(path)

def kill_group(pid: int, grace: float = 5.0) -> None:
    """SIGTERM the process group led by ``pid`` (one we started), SIGKILL it if it lingers."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            reaped, _ = os.waitpid(pid, os.WNOHANG)  # our child when started in this process
        except ChildProcessError:
            reaped = 0
        if reaped == pid or not alive(pid):
            break
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)  # the forked session servers too, if any survived
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:  # until the kernel has removed every member
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)

def parse_address(text: str, option: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise BnnError(f"{option} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9190")
    return host, int(port)
