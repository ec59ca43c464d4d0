"""The cache folder: ``$BNN_TVM_CACHE``, else ``$XDG_CACHE_HOME/bnn_tvm`` (``~/.cache/bnn_tvm``).

Models fetched by name, the emulated board's root, state files of running processes, cross-built
helpers and private temporary folders all live under it."""

from __future__ import annotations

import os


def cache_dir() -> str:
    base = os.environ.get("BNN_TVM_CACHE")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "bnn_tvm")
    return base
