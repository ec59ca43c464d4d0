"""Running a compiled module: the Relax VM over the shared library, any batch size."""

from __future__ import annotations

import json
import os

import numpy as np

from .compiler import METADATA_FUNC
from .errors import BnnError


class CompiledRunner:
    """Runs a module compiled for a fixed batch on inputs of any batch, chunk by chunk."""

    def __init__(self, module, device=None):
        import tvm
        from tvm import relax

        self.device = device or tvm.cpu()
        self.vm = relax.VirtualMachine(module, self.device)
        self.metadata = json.loads(str(self.vm[METADATA_FUNC]()))
        self.input_shape = tuple(self.metadata["input_shape"])

    @classmethod
    def load(cls, path: str) -> "CompiledRunner":
        import tvm

        if not os.path.isfile(path):
            raise BnnError(f"no compiled module at {path}")
        try:
            module = tvm.runtime.load_module(path)
            return cls(module)
        except Exception as err:
            raise BnnError(f"{path} is not a bnn_tvm module ({err})") from err

    def check_input(self, x: np.ndarray, source: str) -> np.ndarray:
        expected = self.input_shape[1:]
        if x.ndim != len(self.input_shape) or tuple(x.shape[1:]) != expected:
            raise BnnError(
                f"{source}: input shape {tuple(x.shape)} does not match the model's "
                f"(N, {', '.join(map(str, expected))}) [{self.metadata['input_name']}]"
            )
        if not np.issubdtype(x.dtype, np.floating):
            raise BnnError(f"{source}: input dtype {x.dtype} is not floating point")
        return np.ascontiguousarray(x, dtype=np.float32)

    def run(self, x: np.ndarray, source: str = "input") -> list[np.ndarray]:
        """All graph outputs for the batch ``x``, concatenated over compiled-batch chunks."""
        import tvm

        x = self.check_input(x, source)
        batch = self.input_shape[0]
        chunks: list[list[np.ndarray]] = []
        for start in range(0, len(x), batch):
            part = x[start : start + batch]
            padded = np.zeros((batch,) + part.shape[1:], np.float32)
            padded[: len(part)] = part
            result = self.vm["main"](tvm.runtime.tensor(padded, self.device))
            outputs = [result] if hasattr(result, "numpy") else list(result)  # one tensor or a tuple
            chunks.append([o.numpy()[: len(part)] for o in outputs])
        return [np.concatenate(parts) for parts in zip(*chunks)]
