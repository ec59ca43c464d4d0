"""Relax passes that find binarized layers in an imported ONNX graph and fuse them into
XNOR-popcount kernels (the design called these Relay passes; TVM >= 0.20 has Relax)."""

from .common import PassLog
from .pipeline import binarize

__all__ = ["PassLog", "binarize"]
