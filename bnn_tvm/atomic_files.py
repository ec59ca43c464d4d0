"""File output that is never half-written: write beside the target, then rename over it.

A command killed with SIGKILL cannot clean up after itself, so every temporary file or folder
it makes is named by its process id, and the next command removes those of processes that are
gone: the ``.tmp-PID-*`` files beside an output, and the per-command temporary folder (TVM's,
the C compiler's and the tuner's files) under the cache.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from typing import Callable

from .errors import BnnError
from .devices.processes import alive
from .cache import cache_dir

TMP_PREFIX = ".tmp-"


def atomic_write(path: str, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)``, then move ``tmp_path`` to ``path`` in one step. An output that
    cannot be written (a folder that cannot be made, no permission, a full disk) is a
    ``BnnError`` naming it, and nothing is left behind."""
    try:
        _write_then_rename(path, write)
    except OSError as err:
        raise BnnError(f"cannot write {path}: {err}") from err


def _write_then_rename(path: str, write: Callable[[str], object]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    remove_stale(directory, TMP_PREFIX)
    suffix = os.path.splitext(path)[1]  # some writers pick the format from the suffix
    # the rename is atomic only within one file system: the temporary file sits beside the output
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f"{TMP_PREFIX}{os.getpid()}-", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates the file owner-only (0600); the output gets the mode a plain open()
        # would have given it (0666 less the umask), or keeps the mode of the file it replaces
        os.chmod(tmp, os.stat(path).st_mode & 0o7777 if os.path.exists(path) else 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def refuse_overwriting_input(output: str, inputs: list, option: str) -> None:
    """An output naming one of the command's input files (also through a link) would replace it."""
    for source in inputs:
        if source and os.path.isfile(source) and os.path.exists(output) and os.path.samefile(source, output):
            raise BnnError(f"{option} {output} is the model being read; give another output file")


def remove_stale(directory: str, prefix: str = "") -> None:
    """Remove ``directory``'s entries named ``PREFIX<pid>-*`` whose process is gone (killed before
    it could clean up); those of running processes, and anything else, stay."""
    for entry in glob.glob(os.path.join(glob.escape(directory), f"{glob.escape(prefix)}*-*")):
        pid = os.path.basename(entry)[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or alive(int(pid)):
            continue
        try:
            shutil.rmtree(entry) if os.path.isdir(entry) and not os.path.islink(entry) else os.remove(entry)
        except OSError:
            pass  # another command removed it first, or it is not ours to remove


@contextlib.contextmanager
def private_tempdir():
    """Point ``tempfile`` and ``$TMPDIR`` (for the compilers TVM runs) at a folder of this process's
    own under the cache, removed afterwards; the folders of killed commands are removed first.
    Where the cache cannot be written the system's temporary folder stays in use."""
    base = os.path.join(cache_dir(), "tmp")
    try:
        os.makedirs(base, exist_ok=True)
        remove_stale(base)
        folder = tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=base)
    except OSError:
        yield None
        return
    saved = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir, os.environ["TMPDIR"] = folder, folder
    try:
        yield folder
    finally:
        tempfile.tempdir = saved[0]
        if saved[1] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[1]
        shutil.rmtree(folder, ignore_errors=True)


def current_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask
