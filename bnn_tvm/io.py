"""File output that is never half-written: write beside the target, then rename over it."""

from __future__ import annotations

import os
import tempfile
from typing import Callable

from .errors import BnnError


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
    suffix = os.path.splitext(path)[1]  # some writers pick the format from the suffix
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
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


def current_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask
