"""A model compiled for a fixed batch, run on inputs of any batch, chunk by chunk.

The base of both runners of a compiled module: ``runtime.CompiledRunner`` (a TVM module in the
Relax VM) and ``standalone_runtime.StandaloneRunner`` (a standalone library through ctypes or
qemu). Each gives ``metadata``, ``input_shape`` and ``_call`` (exactly one compiled batch); this
checks the input and cuts and joins the chunks. NumPy only: ``runtime`` opens standalone
libraries through ``standalone_runtime``, which needs nothing of ``runtime`` but this base.
"""

from __future__ import annotations

import numpy as np

from ..errors import BnnError


class ChunkedRunner:
    """Runs a module compiled for a fixed batch on inputs of any batch, chunk by chunk."""

    metadata: dict
    input_shape: tuple

    def _call(self, x: np.ndarray) -> list[np.ndarray]:
        """The module's outputs for exactly one compiled batch ``x``."""
        raise NotImplementedError

    def check_input(self, x: np.ndarray, source: str) -> np.ndarray:
        expected = self.input_shape[1:]
        if x.ndim != len(self.input_shape) or tuple(x.shape[1:]) != expected:
            raise BnnError(
                f"{source}: input shape {tuple(x.shape)} does not match the model's "
                f"(N, {', '.join(map(str, expected))}) [{self.metadata['input_name']}]"
            )
        if len(x) == 0:
            raise BnnError(f"{source}: the batch is empty (shape {tuple(x.shape)}); give at least one input")
        if not np.issubdtype(x.dtype, np.floating):
            raise BnnError(f"{source}: input dtype {x.dtype} is not floating point")
        return np.ascontiguousarray(x, dtype=np.float32)

    def run(self, x: np.ndarray, source: str = "input") -> list[np.ndarray]:
        """All graph outputs for the batch ``x``, concatenated over compiled-batch chunks. Only
        outputs whose first axis is the batch can be cut and joined: a module with any other
        output (``[B*N, C]`` rows) takes exactly its compiled batch."""
        x = self.check_input(x, source)
        batch = self.input_shape[0]
        if len(x) == batch:
            return self._call(x)
        first = self._call(self._padded(x[:batch]))
        self._check_outputs_follow_batch(first, len(x), source)
        chunks = [[o[: min(batch, len(x))] for o in first]]
        for start in range(batch, len(x), batch):
            part = x[start : start + batch]
            chunks.append([o[: len(part)] for o in self._call(self._padded(part))])
        return [np.concatenate(parts) for parts in zip(*chunks)]

    def _padded(self, part: np.ndarray) -> np.ndarray:
        padded = np.zeros(tuple(self.input_shape), np.float32)
        padded[: len(part)] = part
        return padded

    def _check_outputs_follow_batch(self, outputs: list[np.ndarray], given: int, source: str) -> None:
        batch = self.input_shape[0]
        names = list(self.metadata.get("outputs") or [])
        for index, output in enumerate(outputs):
            if output.ndim == 0 or output.shape[0] != batch:
                name = names[index] if index < len(names) else f"output {index}"
                raise BnnError(
                    f"{source}: {given} inputs, but the module takes exactly {batch} at a time: its output "
                    f"{name!r} has shape {output.shape}, whose first axis is not the batch, so it cannot be "
                    f"run in chunks; give {batch} inputs or compile with --batch {given}"
                )
