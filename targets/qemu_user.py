"""Running a program built for a target's CPU on this machine under qemu-user: the target's
qemu binary, CPU model (``-cpu``) and cross libc root (``-L``). The kernel checker
(``kernel_check``) and the standalone library's runner (``bnn_tvm.compilation.standalone_runtime``)
both run their programs so."""

from __future__ import annotations

import shutil
import subprocess

from bnn_tvm.errors import BnnError

from . import TargetSpec


def qemu_command(spec: TargetSpec, what: str) -> list[str]:
    """``[qemu, -cpu, CPU, -L, SYSROOT]``, the prefix that runs ``spec``'s code here; a BnnError
    naming ``what`` needs it when the target has no emulator or it is not installed."""
    if not spec.qemu:
        raise BnnError(f"{what}: target {spec.name} has no qemu-user emulator")
    if shutil.which(spec.qemu) is None:
        raise BnnError(f"{what} runs under {spec.qemu}, which is not installed: "
                       "apt-get install qemu-user (or tools/install_system_deps.sh)")
    return [spec.qemu, "-cpu", spec.qemu_cpu, "-L", spec.sysroot]


def run_emulated(spec: TargetSpec, program: list[str], what: str, timeout: float) -> subprocess.CompletedProcess:
    """Run ``program`` (path and arguments) under ``spec``'s qemu-user and return its output
    (text); a timeout or a failure is a BnnError naming ``what`` with the program's last words."""
    command = [*qemu_command(spec, what), *program]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise BnnError(f"{what}: the run under {spec.qemu} took longer than {timeout:.0f} s") from err
    if done.returncode != 0:
        raise BnnError(f"{what}: the run under {spec.qemu} failed (code {done.returncode}): "
                       f"{(done.stderr or done.stdout).strip()[-1000:]}")
    return done
