"""File output that is never half-written: write beside the target, then rename over it."""

from __future__ import annotations

import os
import tempfile
from typing import Callable


def atomic_write(path: str, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)``, then move ``tmp_path`` to ``path`` in one step."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    suffix = os.path.splitext(path)[1]  # some writers pick the format from the suffix
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
