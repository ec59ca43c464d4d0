"""Relax passes that find binarized layers in an imported ONNX graph and fuse them into
XNOR-popcount kernels (the design called these Relay passes; TVM >= 0.20 has Relax)."""

__all__ = ["PassLog", "binarize"]


def __getattr__(name: str):
    # imported on first use: the CLI reads relay_passes.conventions without loading TVM
    if name in __all__:
        from . import common, pipeline

        return {"PassLog": common.PassLog, "binarize": pipeline.binarize}[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
