"""Loading a user's ONNX file into Relax, with errors that name the file, node and op at fault."""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from .errors import BnnError

CONSTANT_VALUE_ATTRS = ("value", "value_float", "value_floats", "value_int", "value_ints")


def load_onnx(path: str) -> onnx.ModelProto:
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as err:
        raise BnnError(f"cannot read model {path}: {err.strerror}") from err
    try:
        model = onnx.load_from_string(raw)
    except Exception as err:  # protobuf raises its own DecodeError family
        raise BnnError(f"{path} is not an ONNX model (protobuf decode failed: {err})") from err
    if not model.graph.node:
        raise BnnError(f"{path} is not an ONNX model (no graph nodes)")
    return model


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Turn ``Constant`` nodes into initializers: TVM's importer reads only their ``value`` form."""
    import numpy as np

    kept = []
    for node in model.graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            kept.append(node)
            continue
        attr = next((a for a in node.attribute if a.name in CONSTANT_VALUE_ATTRS), None)
        if attr is None:
            raise BnnError(f"Constant node {node.name!r} has no supported value attribute")
        if attr.name == "value":
            array = numpy_helper.to_array(attr.t)
        elif attr.name.startswith("value_float"):
            array = np.array(onnx.helper.get_attribute_value(attr), dtype=np.float32)
        else:
            array = np.array(onnx.helper.get_attribute_value(attr), dtype=np.int64)
        model.graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def pin_input_shape(model: onnx.ModelProto, name: str, shape: list[int]) -> onnx.ModelProto:
    """Give the input a static shape and fold the shape arithmetic a dynamic batch leaves behind
    (``Shape -> Squeeze -> Concat -> Reshape``), which TVM's importer cannot take."""
    import onnxscript.optimizer

    dims = next(i for i in model.graph.input if i.name == name).type.tensor_type.shape.dim
    for dim, value in zip(dims, shape):
        dim.Clear()
        dim.dim_value = value
    onnxscript.optimizer.fold_constants(model, input_size_limit=1 << 26, output_size_limit=1 << 26)  # in place
    onnxscript.optimizer.remove_unused_nodes(model)
    return constants_to_initializers(model)


def check_supported(model: onnx.ModelProto, path: str) -> None:
    """Fail before import on an op TVM's ONNX frontend cannot convert, naming the node."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = _get_convert_map()
    for node in model.graph.node:
        if node.op_type not in known or node.domain not in ("", "ai.onnx"):
            domain = f" (domain {node.domain})" if node.domain not in ("", "ai.onnx") else ""
            raise BnnError(
                f"{path}: node {node.name or '<unnamed>'!r} has unsupported op type {node.op_type!r}{domain}"
            )


def graph_input(model: onnx.ModelProto, path: str) -> tuple[str, list]:
    """The one data input (name, dims with None for symbolic ones); initializers are not inputs."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise BnnError(f"{path}: expected exactly one data input, found {[i.name for i in inputs]}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, dims
