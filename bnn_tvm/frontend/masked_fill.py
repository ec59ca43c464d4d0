"""PyTorch's masked fill by boolean indexing (``out[mask] = c``) as ``Where(mask, c, out)``.

The ``torch.export`` exporter writes ``out[out == -1] = 0`` (BiBERT's ``ZMeanBinaryQuantizer``,
``transformer/utils_quant.py`` of htqin/BiBERT) as ``index_put``:
``ScatterND(data, Transpose(NonZero(mask)), Reshape(Expand(c, ReduceSum(Cast(mask)))))``, the
positions of the mask as data-dependent indices, which TVM's ONNX importer cannot take (the
number of indices is known only at run time). ScatterND without reduction writes ``c`` at every
position where ``mask`` is true (``NonZero`` lists them, each once, as full coordinates when the
mask has the data's rank and shape) and leaves the others: exactly ``Where(mask, c, data)``, for
a scalar constant ``c`` of the data's type. The rewrite requires each of those conditions and
leaves anything else to the importer.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

BOOLEAN_OPS = frozenset({"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Xor",
                         "IsNaN", "IsInf"})


def masked_fills_as_where(model: onnx.ModelProto) -> int:
    """Replace, in place, each ``ScatterND`` that is a masked fill by its ``Where``; the nodes
    computing the indices and updates are left for dead-node removal. Needs the shapes of shape
    inference (``value_info``). Returns how many it replaced."""
    producers = {out: node for node in model.graph.node for out in node.output}
    constants = {init.name: init for init in model.graph.initializer}
    shapes = _static_shapes(model)
    replaced = 0
    for index, node in enumerate(model.graph.node):
        found = _masked_fill(node, producers, constants, shapes)
        if found is None:
            continue
        mask, value = found
        name = f"{node.name or node.output[0]}_fill_value"
        model.graph.initializer.append(numpy_helper.from_array(value, name))
        constants[name] = model.graph.initializer[-1]
        where = helper.make_node("Where", [mask, name, node.input[0]], list(node.output), name=node.name)
        model.graph.node[index].CopyFrom(where)
        replaced += 1
    return replaced


def _masked_fill(node, producers: dict, constants: dict, shapes: dict):
    """``(mask, c)`` when ``node`` is ``ScatterND(data, Transpose(NonZero(mask), [1, 0]),
    Reshape/Expand(c))`` with a boolean ``mask`` of the data's static shape and ``c`` one constant
    element of the data's type, else None."""
    if node.op_type != "ScatterND" or node.domain not in ("", "ai.onnx"):
        return None
    if any(a.name == "reduction" and a.s not in (b"", b"none") for a in node.attribute):
        return None
    data, indices, updates = node.input
    transpose = producers.get(indices)
    if transpose is None or transpose.op_type != "Transpose" or list(_ints(transpose, "perm")) != [1, 0]:
        return None
    nonzero = producers.get(transpose.input[0])
    if nonzero is None or nonzero.op_type != "NonZero":
        return None
    mask = nonzero.input[0]
    if producers.get(mask) is None or producers[mask].op_type not in BOOLEAN_OPS:
        return None
    if shapes.get(mask) is None or shapes.get(mask) != shapes.get(data):
        return None
    value = _uniform_source(updates, producers, constants)
    data_type = shapes.get(data + ":type")
    if value is None or value.size != 1 or data_type is None or value.dtype != data_type:
        return None
    return mask, value.reshape(())


def _uniform_source(name: str, producers: dict, constants: dict):
    """The constant that ``name`` repeats through ``Reshape`` and ``Expand`` (their other operands
    only shape it), or None."""
    while name not in constants:
        node = producers.get(name)
        if node is None or node.op_type not in ("Reshape", "Expand"):
            return None
        name = node.input[0]
    return numpy_helper.to_array(constants[name])


def _ints(node, attribute: str) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == attribute), [])


def _static_shapes(model: onnx.ModelProto) -> dict:
    """``{tensor: shape}`` for the tensors whose shape inference gave every dimension, and
    ``{tensor + ":type": numpy dtype}``."""
    found = {}
    for info in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        tensor = info.type.tensor_type
        if tensor.elem_type:
            found[info.name + ":type"] = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        dims = tensor.shape.dim
        if tensor.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            found[info.name] = [d.dim_value for d in dims]
    return found
