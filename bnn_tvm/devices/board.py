"""An emulated Raspberry Pi: a genuine TVM RPC server for aarch64 running under qemu-user.

Set-up (once, cached under ``cache_dir()/board-aarch64``; apt and pip only):
  * Debian's arm64 Python 3.11 and the libraries it and TVM need, fetched with
    ``apt-get download`` and unpacked with ``dpkg -x`` (nothing is installed on the host);
  * the aarch64 wheels of TVM 0.27 (``pip install --target --platform manylinux_2_28_aarch64``),
    run with ``TVM_USE_RUNTIME_LIB=1`` so only ``libtvm_runtime`` is loaded, and of ONNX Runtime
    (the ``ort_fp32`` engine of ``bench`` on the board);
  * a Raspberry Pi 3B's ``/proc/cpuinfo`` at ``root/proc/cpuinfo``: qemu-user looks absolute paths
    up under ``QEMU_LD_PREFIX`` first, and qemu 7.2 would otherwise pass the host's x86 text
    through, on which ONNX Runtime's CPU detection (pytorch/cpuinfo) crashes at import;
  * the instruction-counting QEMU plugin, compiled from ``qemu_board/insn_count.c``.

Start/stop: ``start()`` runs ``qemu_board/board_server.py`` with that Python under
``qemu-aarch64 -cpu cortex-a53`` (or the target's CPU) in its own process group, waits until it
listens (and, with a tracker, until the tracker lists it), and records it in a state file;
``stop()`` ends that process group, the forked per-session servers included.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from bnn_tvm import targets

from ..cache import cache_dir
from ..errors import BnnError
from .endpoint import Endpoint
from .processes import forget_stale, kill_group, parse_address, process_start, read_text, run_dir, still_ours, tail
from .tracker import tracker_keys

QEMU_BOARD_DIR = os.path.join(os.path.dirname(__file__), "qemu_board")
SERVER_SCRIPT = os.path.join(QEMU_BOARD_DIR, "board_server.py")
PLUGIN_SOURCE = os.path.join(QEMU_BOARD_DIR, "insn_count.c")
WHEELS = ["apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post0"]
# ONNX Runtime's aarch64 build, the float baseline ``bench --engines ort_fp32`` runs on the board;
# the version the host's environment pins, so both sides run the same release.
ORT_WHEELS = ["onnxruntime==1.31.1"]
ROOT_PACKAGES = ["python3.11-minimal", "libpython3.11-stdlib", "libstdc++6"]
# Parts of the closure a Python interpreter never loads (tools with maintainer scripts).
SKIPPED_PACKAGES = {"dpkg", "install-info", "tar"}
DEFAULT_PORT = 9090
START_TIMEOUT_S = 180  # qemu imports tvm in ~10 s here; a loaded CI machine is slower


def _pi3b_cpuinfo() -> str:
    """``/proc/cpuinfo`` of a Raspberry Pi 3B under a 64-bit kernel: four Cortex-A53 cores (ARM
    part 0xd03), the features its ARMv8.0-A cores report (no atomics, no fp16, no dot product)."""
    core = ("BogoMIPS\t: 38.40\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n"
            "CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd03\nCPU revision\t: 4\n")
    cores = "\n".join(f"processor\t: {i}\n{core}" for i in range(4))
    return (cores + "\nHardware\t: BCM2835\nRevision\t: a02082\nSerial\t\t: 0000000000000000\n"
            "Model\t\t: Raspberry Pi 3 Model B Rev 1.2\n")


PI3B_CPUINFO = _pi3b_cpuinfo()


# ---------------------------------------------------------------------------------------------
# Set-up of the aarch64 root


@dataclass(frozen=True)
class BoardRoot:
    path: str  # the folder holding root/, site/, insn_count.so

    @property
    def sysroot(self) -> str:
        return os.path.join(self.path, "root")

    @property
    def python(self) -> str:
        return os.path.join(self.sysroot, "usr", "bin", "python3.11")

    @property
    def site(self) -> str:
        return os.path.join(self.path, "site")

    @property
    def plugin(self) -> str:
        return os.path.join(self.path, "insn_count.so")

    @property
    def runtime_extra(self) -> str:
        # MetaSchedule's RPC runner needs the functions in this library on the server.
        return os.path.join(self.site, "tvm", "lib", "libtvm_runtime_extra.so")

    def env(self, cpu: str, threads: int = 1) -> dict:
        env = dict(os.environ)
        env.update(
            QEMU_LD_PREFIX=self.sysroot,
            QEMU_CPU=cpu,
            PYTHONHOME=os.path.join(self.sysroot, "usr"),
            PYTHONPATH=self.site,
            PYTHONNOUSERSITE="1",
            PYTHONHASHSEED="0",  # same interpreter work on every run: deterministic counts
            TVM_USE_RUNTIME_LIB="1",
            TVM_NUM_THREADS=str(threads),
        )
        env.pop("VIRTUAL_ENV", None)
        return env


def _setup_version() -> str:
    """Changes whenever what the set-up produces would change: then the cache is rebuilt."""
    digest = hashlib.sha256()
    for path in (PLUGIN_SOURCE,):
        with open(path, "rb") as f:
            digest.update(f.read())
    digest.update(" ".join(WHEELS + ORT_WHEELS + ROOT_PACKAGES + sorted(SKIPPED_PACKAGES)).encode())
    digest.update(PI3B_CPUINFO.encode())
    return digest.hexdigest()[:16]


def _check_tools(qemu: str) -> None:
    missing = [tool for tool in ("apt-get", "apt-cache", "dpkg", qemu, "gcc") if shutil.which(tool) is None]
    if missing:
        raise BnnError(
            f"the emulated board needs {', '.join(missing)}: run `sudo tools/install_system_deps.sh` "
            "(apt-get install qemu-user gcc, and arm64 package lists)"
        )
    foreign = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True, text=True).stdout
    if "arm64" not in foreign.split():
        raise BnnError(
            "the emulated board downloads Debian's arm64 Python: run `sudo tools/install_system_deps.sh` "
            "(dpkg --add-architecture arm64 && apt-get update)"
        )


def _run(cmd: list[str], what: str, timeout: float = 600, **kwargs) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as err:
        raise BnnError(f"board set-up: {what} took longer than {timeout:.0f} s ({' '.join(cmd[:4])} ...)") from err
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-8:]
        raise BnnError(f"board set-up: {what} failed ({' '.join(cmd[:4])} ...):\n" + "\n".join(tail))
    return done.stdout


def _arm64_closure() -> list[str]:
    """The arm64 packages ROOT_PACKAGES need, dependencies included (virtual ones left out)."""
    out = _run(
        ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
         "--no-breaks", "--no-replaces", "--no-enhances", "--no-pre-depends",
         *[f"{p}:arm64" for p in ROOT_PACKAGES]],
        "resolving arm64 dependencies (apt-cache depends)",
    )
    names = {line.strip() for line in out.splitlines() if line and not line[0].isspace()}
    closure = sorted(n for n in names if n.endswith(":arm64") and not n.startswith("<"))
    return [n for n in closure if n.split(":")[0] not in SKIPPED_PACKAGES]


def _download_and_unpack(work: str, packages: list[str], progress) -> None:
    debs = os.path.join(work, "debs")
    os.makedirs(debs)
    _run(["apt-get", "download", "-q", *packages], "apt-get download of the arm64 packages", cwd=debs)
    progress.update(1)
    for name in sorted(os.listdir(debs)):
        _run(["dpkg", "-x", os.path.join(debs, name), os.path.join(work, "root")], f"unpacking {name}")
    shutil.rmtree(debs)
    progress.update(1)


def _install_wheels(work: str) -> None:
    site = os.path.join(work, "site")
    _run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-warn-script-location", "--target", site,
         "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux_2_17_aarch64",
         "--platform", "manylinux2014_aarch64", "--only-binary=:all:", "--python-version", "3.11",
         "--implementation", "cp", "--abi", "cp311", *WHEELS, *ORT_WHEELS],
        "pip install of the aarch64 TVM and ONNX Runtime wheels",
        timeout=900,
    )
    # The board loads libtvm_runtime only (TVM_USE_RUNTIME_LIB=1): drop the 240 MB compiler.
    for unused in ("libtvm_compiler.so", "libtvm_runtime_cuda.so"):
        path = os.path.join(site, "tvm", "lib", unused)
        if os.path.exists(path):
            os.remove(path)


def _write_cpuinfo(work: str) -> None:
    """The guest's ``/proc/cpuinfo`` (see the module docstring). qemu opens ``/proc/self/*`` and
    the rest of ``/proc`` from the host still: only this one file exists under ``root/proc``."""
    folder = os.path.join(work, "root", "proc")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "cpuinfo"), "w") as f:
        f.write(PI3B_CPUINFO)


def _build_plugin(work: str) -> None:
    _run(
        ["gcc", "-O2", "-shared", "-fPIC", "-o", os.path.join(work, "insn_count.so"), PLUGIN_SOURCE],
        "compiling the instruction-counting QEMU plugin",
    )


def _smoke_test(root: BoardRoot, qemu: str) -> None:
    out = _run(
        [qemu, root.python, "-c",
         "import platform, tvm, onnxruntime; print(platform.machine(), tvm.__version__, onnxruntime.__version__)"],
        "importing tvm and onnxruntime under qemu",
        timeout=300,
        env=root.env("cortex-a53"),
    )
    ort_version = ORT_WHEELS[0].split("==")[1]
    if not (out.startswith("aarch64 0.27") and out.split()[-1] == ort_version):
        raise BnnError(f"board set-up: the emulated Python reports {out.strip()!r}, expected aarch64 with TVM 0.27 "
                       f"and ONNX Runtime {ort_version}")


def ensure_root(qemu: str = "qemu-aarch64", progress: bool = True) -> BoardRoot:
    """The cached aarch64 root, built first if missing or stale (about a minute with a warm apt)."""
    import fcntl

    from tqdm import tqdm

    path = os.path.join(cache_dir(), "board-aarch64")
    root = BoardRoot(path)
    stamp = os.path.join(path, "ready")
    version = _setup_version()
    if read_text(stamp) == version:
        return root
    os.makedirs(cache_dir(), exist_ok=True)
    with open(os.path.join(cache_dir(), "board-aarch64.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second set-up waits for the first, then reuses it
        if read_text(stamp) == version:
            return root
        _check_tools(qemu)
        work = path + ".partial"
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(os.path.join(work, "root"))
        started = time.monotonic()
        with tqdm(total=5, desc="board set-up", unit="step", disable=not progress) as bar:
            _download_and_unpack(work, _arm64_closure(), bar)
            _install_wheels(work)
            _write_cpuinfo(work)
            bar.update(1)
            _build_plugin(work)
            bar.update(1)
            shutil.rmtree(path, ignore_errors=True)
            os.replace(work, path)
            _smoke_test(root, qemu)
            bar.update(1)
        with open(stamp, "w") as f:
            f.write(version)
        with open(os.path.join(path, "setup_seconds"), "w") as f:
            f.write(f"{time.monotonic() - started:.1f}\n")
    return root


# ---------------------------------------------------------------------------------------------
# Running boards


@dataclass
class BoardState:
    name: str  # the board's name: the tracker key, or the target
    target: str
    pid: int  # qemu's pid, also its process group
    host: str
    port: int
    key: str
    tracker: str | None
    counting: bool
    log: str
    started: float
    pid_start: str | None = None  # process_start(pid) when started; None in older state files
    user: str = ""  # the account the board runs as ("" in older state files)
    user_reason: str = ""  # why it runs as root, when started by root

    @property
    def work(self) -> str:
        return board_work_dir(self.name)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def endpoint(self) -> Endpoint:
        """How a client reaches this board: through its tracker if it registered with one, else
        at its own address; with its key either way."""
        if self.tracker:
            return Endpoint(tracker=self.tracker, key=self.key)
        return Endpoint(rpc=self.address, key=self.key)


def _state_path(name: str) -> str:
    return os.path.join(run_dir(), f"board-{name}.json")


def board_work_dir(name: str) -> str:
    """The folder the board writes to (its port, instruction counts): its account owns it."""
    return os.path.join(run_dir(), f"board-{name}.d")


# The account an emulated board started by root runs as: a client's code runs on the board with
# the board's rights (RPC is remote code execution by design), and qemu-user is no sandbox.
UNPRIVILEGED_USER = "nobody"


def as_user(account):
    """A ``preexec_fn`` that makes the child process ``account`` (a ``pwd`` entry)."""
    def drop() -> None:
        os.setgroups([])
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)

    return drop


def board_account(readable: list[str], work: str):
    """``(pwd entry, "")`` of the unprivileged account a board started by root runs as, after
    giving it ``work``; or ``(None, why not)`` (then the board runs as root). Not root: ``(None, "")``."""
    import pwd

    if os.geteuid() != 0:
        return None, ""
    try:
        account = pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        return None, f"there is no user {UNPRIVILEGED_USER!r}"
    try:
        os.chown(work, account.pw_uid, account.pw_gid)
    except OSError as err:
        return None, f"cannot give {work} to user {UNPRIVILEGED_USER} ({err.strerror})"
    check = 'test -w "$1" -a -x "$1" || { echo "$1"; exit 1; }; shift; for p; do test -r "$p" || { echo "$p"; exit 1; }; done'
    done = subprocess.run(["/bin/sh", "-c", check, "sh", work, *readable], preexec_fn=as_user(account),
                          capture_output=True, text=True)
    if done.returncode != 0:
        return None, f"user {UNPRIVILEGED_USER} cannot reach {done.stdout.strip() or work}"
    return account, ""


def running() -> list[BoardState]:
    """Boards whose state file names a live process that is still the board; stale files are
    removed."""
    states = []
    for entry in sorted(os.listdir(run_dir())):
        if entry.startswith("board-") and entry.endswith(".json"):
            path = os.path.join(run_dir(), entry)
            state = BoardState(**json.loads(read_text(path) or "{}"))
            if still_ours(state.pid, state.pid_start, os.path.basename(SERVER_SCRIPT)):
                states.append(state)
            else:  # it died (killed, crashed), or its pid went to another process: forget it
                forget_stale(path, f"board {state.name}", state.pid)
                shutil.rmtree(state.work, ignore_errors=True)
    return states


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (an unresolvable name counts as not)."""
    import ipaddress

    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


def exposure_warning(host: str, port: int, what: str) -> str | None:
    """The warning for a server bound where other machines can reach it (None on loopback):
    TVM RPC runs whatever code a client sends, and neither it nor its tracker authenticates."""
    if is_loopback(host):
        return None
    import getpass

    return (f"warning: the {what} listens on {host}:{port}, reachable from other machines; TVM RPC runs any code a "
            f"client sends (as user {getpass.getuser()}) and has no authentication: use the default 127.0.0.1 "
            "unless every machine on this network is trusted")


def board_key(target: str, host: str, key: str | None) -> str:
    """The key a board answers to: ``key`` if given; on loopback the target name (what every
    client tries first); on an address other machines reach, a random one. An RPC server
    refuses a direct connection that brings another key, so a random key keeps clients that
    were not told it off a board reached without a tracker. It is no password: anyone who can
    reach a tracker the board registers with can list its keys, the key crosses the network in
    clear, and whoever holds it runs any code on the board."""
    if key:
        return key
    if is_loopback(host):
        return target
    import secrets

    return f"{target}-{secrets.token_hex(8)}"


def _wait_until(condition, timeout: float, proc: subprocess.Popen, log: str, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise BnnError(f"the emulated board exited (code {proc.returncode}) while {what}:\n{tail(log)}")
        if time.monotonic() > deadline:
            kill_group(proc.pid)
            raise BnnError(f"the emulated board was not {what} after {timeout:.0f} s; log {log}:\n{tail(log)}")
        time.sleep(0.2)


def _registered(tracker: tuple[str, int], key: str) -> bool:
    try:
        return key in tracker_keys(tracker, timeout=5)
    except BnnError:
        return False


def start(
    target: str = "rasp3b",
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    tracker: str | None = None,
    key: str | None = None,
    count_instructions: bool = True,
    threads: int = 1,
    progress: bool = True,
    timeout: float = START_TIMEOUT_S,
) -> BoardState:
    """Start an emulated board for ``target`` and return once it serves (and is registered)."""
    spec = targets.get(target)
    if spec.board != "aarch64":
        raise BnnError(
            f"target {spec.name} has no emulated board (boards exist for the aarch64 targets: "
            f"{', '.join(n for n in targets.names() if _has_board(n))}); {spec.runtime}"
        )
    key = board_key(spec.name, host, key)
    name = key
    for state in running():
        if state.name == name:
            raise BnnError(
                f"a board named {name!r} already runs (pid {state.pid}, {state.address}); "
                "`python -m bnn_tvm board stop` ends it"
            )
    tracker_addr = parse_address(tracker, "--tracker") if tracker else None
    root = ensure_root(spec.qemu, progress=progress)
    work = board_work_dir(name)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    port_file = os.path.join(work, "port")
    counts = os.path.join(work, "insn")
    log = os.path.join(run_dir(), f"board-{name}.log")
    account, user_reason = board_account([shutil.which(spec.qemu) or spec.qemu, root.python, root.site, root.plugin,
                                          root.runtime_extra, SERVER_SCRIPT], work)
    cmd = [spec.qemu, "-cpu", spec.qemu_cpu]
    if count_instructions:
        cmd += ["-plugin", f"{root.plugin},out={counts}"]
    cmd += [root.python, SERVER_SCRIPT, "--host", host, "--port", str(port), "--port-end", str(port + 100),
            "--port-file", port_file, "--key", key, "--load-library", root.runtime_extra]
    if tracker_addr:
        cmd += ["--tracker", f"{tracker_addr[0]}:{tracker_addr[1]}"]
    env = root.env(spec.qemu_cpu, threads)
    if count_instructions:
        env["BNN_INSN_OUT"] = counts
    with open(log, "w") as log_file:
        # Own process group: stop() ends qemu and the session processes it forks, nothing else.
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=work,
                                preexec_fn=as_user(account) if account else None)
    _wait_until(lambda: os.path.exists(port_file), timeout, proc, log, "listening")
    bound = int(read_text(port_file))
    if tracker_addr:
        _wait_until(lambda: _registered(tracker_addr, key), 60, proc, log, f"registered with the tracker as {key!r}")
    state = BoardState(name, spec.name, proc.pid, host, bound, key,
                       f"{tracker_addr[0]}:{tracker_addr[1]}" if tracker_addr else None,
                       count_instructions, log, time.time(), process_start(proc.pid),
                       account.pw_name if account else current_user(), user_reason)
    with open(_state_path(name), "w") as f:
        json.dump(asdict(state), f)
    return state


def current_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def _has_board(name: str) -> bool:
    try:
        return targets.get(name).board is not None
    except BnnError:
        return False


def stop(name: str | None = None) -> list[BoardState]:
    """Stop the board called ``name`` (its key), or every running board; returns those stopped."""
    states = running()
    if name is not None:
        states = [s for s in states if s.name == name]
        if not states:
            raise BnnError(f"no emulated board named {name!r} is running")
    for state in states:
        kill_group(state.pid)
        shutil.rmtree(state.work, ignore_errors=True)
        if os.path.exists(_state_path(state.name)):
            os.remove(_state_path(state.name))
    return states


def wait_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False
