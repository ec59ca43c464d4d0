"""ONNX Runtime as the reference, and the tolerances a compiled model is held to.

What ``verify`` (the whole model) and ``verify_layers`` (segment by segment) both compare
against: ONNX Runtime's outputs with its graph optimisations off (its default ones fold Conv+BN
and move values that sit exactly on a threshold), the relative tolerance of float outputs, and
where the float graph itself puts a binarizer's input within rounding of its threshold (a
"near tie", which float rounding upstream may decide either way).
"""

from __future__ import annotations

import numpy as np
import onnx

from .compiler import add_graph_outputs
from ..errors import BnnError

RELATIVE_TOLERANCE = 1e-5


def reference_outputs(
    model: onnx.ModelProto, x: np.ndarray, input_name: str, batch: int | None = None
) -> list[np.ndarray]:
    """ONNX Runtime's outputs, optimisations off; in chunks of ``batch`` for a fixed-batch model."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    step = batch or len(x)
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        chunks = [session.run(None, {input_name: x[i : i + step]}) for i in range(0, len(x), step)]
    except Exception as err:  # noqa: BLE001 (ORT's errors have no public common type)
        raise BnnError(f"ONNX Runtime, the reference, cannot run the model: {str(err).strip().splitlines()[0]}") from err
    return [np.concatenate(parts) for parts in zip(*chunks)]


NEAR_TIE = 1e-5  # relative to the range of a binarizer's input: within float rounding of its threshold
DECISIONS = ("GreaterOrEqual", "Greater", "Less", "LessOrEqual", "Sign", "Round")



def near_ties(model, tensors: list[str], x, input_name: str, batch) -> dict:
    """``{tensor: mask}``: where the float graph (ONNX Runtime, on ``x``) puts the input of the
    binarizer producing ``tensor`` within ``NEAR_TIE`` of its range from the threshold (from a
    rounding boundary, for a ``Round``); None where that input is not found."""
    found = {tensor: decision_input(model, tensor) for tensor in tensors}
    sources = list(dict.fromkeys(f[0] for f in found.values() if f is not None))
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    del probe.graph.output[:]
    add_graph_outputs(probe, sources)
    values = dict(zip(sources, reference_outputs(probe, x, input_name, batch))) if sources else {}
    masks = {}
    for tensor, decision in found.items():
        if decision is None:
            masks[tensor] = None
            continue
        source, threshold = decision
        value = values[source].astype(np.float64)
        distance = value - threshold if threshold is not None else value - (np.floor(value) + 0.5)
        scale = float(np.max(np.abs(value - (threshold or 0.0)))) if value.size else 0.0
        masks[tensor] = np.abs(distance) <= NEAR_TIE * scale
    return masks


def decision_input(model, tensor: str) -> tuple[str, float | None] | None:
    """``(input, threshold)`` of the comparison (or ``Sign``, or ``Round``: threshold None, its
    boundaries are the half integers) nearest above ``tensor``: what a binarizer decides on. A
    threshold that is not a scalar constant is refused (None)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    constants = {i.name: i for i in model.graph.initializer}
    frontier = [tensor]
    for _ in range(8):
        nodes = [producer[name] for name in frontier if name in producer]
        for node in nodes:
            if node.op_type in ("Sign", "Round"):
                return node.input[0], 0.0 if node.op_type == "Sign" else None
            if node.op_type in DECISIONS:
                value = onnx.numpy_helper.to_array(constants[node.input[1]]) if node.input[1] in constants else None
                if value is None or value.size != 1:
                    return None
                return node.input[0], float(value.reshape(()))
        frontier = [name for node in nodes for name in node.input if name not in constants]
    return None
