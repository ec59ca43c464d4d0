"""Loading a user's ONNX file into Relax, with errors that name the file, node and op at fault."""

from __future__ import annotations

import os
import re
import warnings

import onnx
from onnx import numpy_helper

from ..errors import BnnError
from .masked_fill import masked_fills_as_where
from .qonnx_quant import add_binarizer_constants, binarizer_nodes, expand_quant

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
    check_opset(model, path)
    load_external_data(model, path)
    check_initializers(model, path)
    return model


# ONNX Runtime (the reference) reads opset 7 and later; ONNX itself defines up to its own version
MIN_OPSET = 7


def check_opset(model: onnx.ModelProto, path: str) -> None:
    """The model declares an ONNX opset that both the importer and the reference can read."""
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    newest = onnx.defs.onnx_opset_version()
    if not versions:
        raise BnnError(f"{path}: declares no ONNX opset (opset_import has no entry for the default domain)")
    if not MIN_OPSET <= versions[0] <= newest:
        raise BnnError(f"{path}: ONNX opset {versions[0]} is not supported (opsets {MIN_OPSET} to {newest} are)")


# strings have no fixed size; 4-bit types pack two values per byte
UNCOUNTED_TYPES = {getattr(onnx.TensorProto, name) for name in ("STRING", "UNDEFINED", "INT4", "UINT4", "FLOAT4E2M1")
                   if hasattr(onnx.TensorProto, name)}


def check_initializers(model: onnx.ModelProto, path: str) -> None:
    """Every initializer holds as many values as its dims say (a cut-short weight would fail
    later, deep in numpy, as "cannot reshape")."""
    import math

    for init in model.graph.initializer:
        if init.data_type in UNCOUNTED_TYPES:
            continue
        needed = math.prod(init.dims)
        if init.raw_data:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
            held, unit = len(init.raw_data), f"bytes ({needed * itemsize} needed)"
            short = held != needed * itemsize
        else:
            field = onnx.helper.tensor_dtype_to_field(init.data_type)
            per_value = 2 if init.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128) else 1
            held, unit = len(getattr(init, field)), f"values ({needed * per_value} needed)"
            short = held != needed * per_value
        if short:
            raise BnnError(f"{path}: initializer {init.name!r} of dims {list(init.dims)} holds {held} {unit}")


def load_external_data(model: onnx.ModelProto, path: str) -> None:
    """Read the tensors stored beside the model (``model.onnx.data``: PyTorch's exporter writes
    its weights there) into ``model``, so it is self-contained from here on."""
    from onnx import external_data_helper

    stored = [t for t in model.graph.initializer if external_data_helper.uses_external_data(t)]
    if not stored:
        return
    folder = os.path.dirname(os.path.abspath(path))
    try:
        external_data_helper.load_external_data_for_model(model, folder)
    except Exception as err:  # onnx raises ValidationError/OSError for a missing or short file
        files = external_data_files(model)
        raise BnnError(f"{path}: its weights are stored in {', '.join(files)} beside it, which cannot be read "
                       f"({str(err).splitlines()[0]})") from err


def external_data_files(model: onnx.ModelProto) -> list[str]:
    """The files, relative to the model's folder, that hold its externally stored tensors."""
    return sorted({e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"})


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


def expand_qonnx(model: onnx.ModelProto, path: str = "the model") -> onnx.ModelProto:
    """Replace QONNX ``BipolarQuant(x, scale)`` (as Brevitas exports it) by its definition,
    ``Where(x >= 0, 1, -1) * scale``, and ``Quant`` by its (``qonnx_quant``), in standard ONNX: TVM
    and ONNX Runtime can then read it."""
    import numpy as np
    from onnx import helper

    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    if not any(n.op_type in ("BipolarQuant", "Quant") and n.domain in QONNX_DOMAINS for n in model.graph.node):
        return model
    add_binarizer_constants(model)
    nodes = []
    for node in model.graph.node:
        if node.op_type == "Quant" and node.domain in QONNX_DOMAINS:
            quant_nodes, initializers = expand_quant(node, constants, path)
            nodes.extend(quant_nodes)
            model.graph.initializer.extend(initializers)
            continue
        if node.op_type != "BipolarQuant" or node.domain not in QONNX_DOMAINS:
            nodes.append(node)
            continue
        x, scale = node.input[0], node.input[1]
        out = node.output[0]
        unit = scale in constants and np.all(constants[scale] == 1)
        signed = out if unit else f"{out}_bipolar"
        nodes.extend(binarizer_nodes(x, signed, node.name if unit else f"{node.name}_sign"))
        if not unit:
            nodes.append(helper.make_node("Mul", [signed, scale], [out], name=node.name))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def standard_onnx(path: str, folder: str) -> tuple[str, onnx.ModelProto]:
    """``(path, model)`` of the model at ``path``, or when it holds QONNX ops, of a copy in
    ``folder`` with them expanded into standard ONNX (what every engine but ours reads)."""
    model = load_onnx(path)
    if not any(n.domain in QONNX_DOMAINS for n in model.graph.node):
        return path, model
    expanded = os.path.join(folder, os.path.splitext(os.path.basename(path))[0] + ".expanded.onnx")
    model = expand_qonnx(model, path)
    onnx.save(model, expanded)
    return expanded, model


def signs_as_binarizers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose ``Sign`` nodes on activations are ``Where(x >= 0, 1, -1)``: the
    float graph under ``--sign-zero plus`` (a ``Sign`` of constants, a weight's, keeps ``Sign(0) = 0``,
    as the compiler folds it)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    constant = {i.name for i in model.graph.initializer} | {""}
    add_binarizer_constants(model)
    nodes = []
    for node in model.graph.node:
        if all(name in constant for name in node.input):
            constant.update(node.output)
        if node.op_type != "Sign" or node.input[0] in constant:
            nodes.append(node)
            continue
        nodes.extend(binarizer_nodes(node.input[0], node.output[0], node.name))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def load_for_compile(path: str) -> onnx.ModelProto:
    """The model at ``path`` in the form the compiler and the reference both read."""
    return expand_qonnx(constants_to_initializers(load_onnx(path)), path)


def pin_input_shape(model: onnx.ModelProto, name: str, shape: list[int]) -> onnx.ModelProto:
    """Give the input a static shape and fold the shape arithmetic a dynamic batch leaves behind
    (``Shape -> Squeeze -> Concat -> Reshape``), which TVM's importer cannot take."""
    import onnxscript.optimizer

    dims = next(i for i in model.graph.input if i.name == name).type.tensor_type.shape.dim
    for dim, value in zip(dims, shape):
        dim.Clear()
        dim.dim_value = value
    try:  # known intermediate shapes let the folding below turn their Shape nodes into constants
        model.CopyFrom(onnx.shape_inference.infer_shapes(model, data_prop=True))
    except Exception:  # noqa: BLE001 (the folding still handles what it can without them)
        pass
    onnxscript.optimizer.fold_constants(model, input_size_limit=1 << 26, output_size_limit=1 << 26)  # in place
    fold_exact_constant_nodes(model)
    masked_fills_as_where(model)  # torch.export's out[mask] = c: data-dependent ScatterND indices
    onnxscript.optimizer.remove_unused_nodes(model)
    return constants_to_initializers(model)


# Ops that copy or select values without arithmetic: evaluating them ahead of time cannot change a
# float, whoever evaluates them. (Float arithmetic on constants is left to the engines: a weight
# computed in the graph must come out exactly as ONNX Runtime computes it.)
VALUE_PRESERVING_OPS = frozenset({
    "Cast", "Concat", "ConstantOfShape", "Expand", "Flatten", "Gather", "Identity", "Reshape",
    "Shape", "Slice", "Split", "Squeeze", "Tile", "Transpose", "Unsqueeze",
})
FOLDED_ELEMENTS_LIMIT = 1 << 24


def fold_exact_constant_nodes(model: onnx.ModelProto) -> bool:
    """Evaluate, with ONNX's reference evaluator, the nodes left with constant inputs only that
    do integer arithmetic or only move values. PyTorch's TorchScript exporter computes ``F.pad``'s
    pads through ``ConstantOfShape -> Concat -> Slice -> Transpose -> Reshape``, which the
    onnxscript folder leaves in place and TVM's importer refuses ("dynamic pads"). Returns whether
    the graph changed."""
    import numpy as np

    stored = {init.name: init for init in model.graph.initializer}
    constants: dict = {}  # arrays of the initializers read so far and of the folded outputs

    def constant(name: str):
        if name not in constants:  # only the inputs of all-constant nodes: not every weight
            constants[name] = numpy_helper.to_array(stored[name])
        return constants[name]

    graph_outputs = {output.name for output in model.graph.output}
    kept, changed = [], False
    for node in model.graph.node:
        inputs = [name for name in node.input if name]
        all_constant = all(name in stored or name in constants for name in inputs)
        feeds = {name: constant(name) for name in inputs} if all_constant else {}
        outputs = None
        if all_constant and is_exactly_foldable(node, feeds, graph_outputs):
            try:
                outputs = evaluate_node(node, feeds, model.opset_import)
            except Exception:  # noqa: BLE001 (an op the evaluator cannot run stays for the importer)
                outputs = None
        if outputs is None or any(np.asarray(v).size > FOLDED_ELEMENTS_LIMIT for v in outputs):
            kept.append(node)
            continue
        for name, value in zip(node.output, outputs):
            constants[name] = np.asarray(value)
            model.graph.initializer.append(numpy_helper.from_array(constants[name], name))
        changed = True
    if changed:
        del model.graph.node[:]
        model.graph.node.extend(kept)
    return changed


def is_exactly_foldable(node: onnx.NodeProto, constant_inputs: dict, graph_outputs: set) -> bool:
    """``node``, whose inputs are the arrays ``constant_inputs``, is deterministic and not a graph
    output, and it moves values or computes on integers only."""
    if node.domain not in ("", "ai.onnx"):
        return False
    if graph_outputs.intersection(node.output) or node.op_type.startswith(("Random", "Bernoulli", "Multinomial")):
        return False
    integer_only = bool(constant_inputs) and all(value.dtype.kind in "biu" for value in constant_inputs.values())
    return node.op_type in VALUE_PRESERVING_OPS or integer_only


def evaluate_node(node: onnx.NodeProto, feeds: dict, opset_import) -> list:
    """``node``'s outputs on constant ``feeds``, computed by ONNX's reference evaluator."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
              for name, value in feeds.items()]
    outputs = [helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None) for name in node.output]
    graph = helper.make_graph([node], "fold", inputs, outputs)
    return ReferenceEvaluator(helper.make_model(graph, opset_imports=opset_import)).run(None, feeds)


def check_supported(model: onnx.ModelProto, path: str) -> None:
    """Fail before import on an op TVM's ONNX frontend cannot convert, naming the node."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = _get_convert_map()
    available = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    for node in model.graph.node:
        for name in node.input:
            if name not in available:
                raise BnnError(f"{path}: node {node.name or '<unnamed>'!r} ({node.op_type}) reads {name!r}, "
                               "which is no graph input, initializer or earlier node's output")
        available.update(node.output)
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


QONNX_DOMAINS = ("qonnx.custom_op.general", "finn.custom_op.general")


def _importer_class():
    """TVM's ONNX importer, extended in three ways (built lazily: importing TVM is slow).

    * The binding of each node's result is recorded with the node's name (and named after it),
      so passes can say which nodes they fused and ``inspect`` can report per node.
    * ``Pad`` with a constant value becomes ``relax.nn.pad``, and ``Clip``/``Max``/``Min`` with
      constant scalar bounds the plain Relax ops (TVM's converters emit opaque TIR calls in which
      the constants can no longer be seen).
    """
    import numpy as np
    from tvm import relax
    from tvm.relax.frontend.onnx.onnx_frontend import ONNXGraphImporter

    class BinaryAwareImporter(ONNXGraphImporter):
        provenance: dict[str, str] = {}  # Relax variable name -> ONNX node name

        def _convert_operator(self, op_name, inputs, attrs, opset):
            node = attrs["tvm_custom"]["name"] or op_name
            if op_name == "Pad" and self._constant_pad(inputs, attrs) is not None:
                op = self._constant_pad(inputs, attrs)
            elif op_name in ("Max", "Min", "Clip") and self._scalar_bound(op_name, inputs) is not None:
                op = self._scalar_bound(op_name, inputs)
            else:
                op = super()._convert_operator(op_name, inputs, attrs, opset)
            name = self._binding_name(node)
            if isinstance(op, relax.Tuple):  # several outputs (BatchNormalization): bind each
                op = relax.Tuple([self._bind(field, name, node) for field in op.fields])
            else:
                op = self._bind(op, name, node)
            return op

        def _sanitize_name(self, name: str) -> str:
            """A C identifier: TVM's own only replaces '.' and prefixes a leading digit or '/',
            leaving PyTorch's "/2/Clip" as "input_/2/Clip", which CUDA C cannot declare as a
            kernel parameter (LLVM does not mind). ``provenance`` keeps the ONNX names."""
            return super()._sanitize_name(re.sub(r"\W", "_", name))

        def _binding_name(self, node: str) -> str:
            """The node's sanitized name, ending in a non-digit: the block builder makes a name
            unique by appending digits (a pass's new binding after ``node_add_1`` becomes
            ``node_add_11``), which must never be another node's name (the dynamo exporter's
            ``node_add_11``), or provenance would credit that node with what the pass emitted."""
            name = self._sanitize_name(node)
            return name + "_" if name[-1:].isdigit() else name

        def _bind(self, expr, name, node):
            """Bind ``expr`` under the node's name; its result binding is what provenance keys on
            (the bindings the builder makes just before it are the node's intermediate values)."""
            if isinstance(expr, (relax.Call, relax.TupleGetItem)):
                expr = self.bb.emit(expr, name)
            if isinstance(expr, relax.Var):
                self.provenance.setdefault(expr.name, node)
            return expr

        @staticmethod
        def _constant(expr):
            from tvm.ir import Constant

            return expr.value.numpy() if isinstance(expr, Constant) else None

        def _scalar_bound(self, op_name, inputs):
            """``Max(x, c)``, ``Min(x, c)``, ``Clip(x, lo, hi)`` with constant scalars as the plain
            Relax ops (TVM's converters emit opaque TIR), so passes can see a clip to [0, 1]."""
            if op_name == "Clip":
                bounds = [self._constant(b) if b is not None else None for b in (list(inputs[1:]) + [None, None])[:2]]
                if any(b is not None and b.size != 1 for b in bounds) or any(
                    b is None and given is not None for b, given in zip(bounds, (list(inputs[1:]) + [None, None])[:2])
                ):
                    return None
                lo = float(bounds[0].reshape(())) if bounds[0] is not None else float("-inf")
                hi = float(bounds[1].reshape(())) if bounds[1] is not None else float("inf")
                return relax.op.clip(inputs[0], relax.prim_value(lo), relax.prim_value(hi))
            if len(inputs) != 2:
                return None
            value = self._constant(inputs[1])
            if value is None or value.size != 1 or self._constant(inputs[0]) is not None:
                return None
            bound = relax.const(value.reshape(()).astype(np.float32))
            return (relax.op.maximum if op_name == "Max" else relax.op.minimum)(inputs[0], bound)

        def _constant_pad(self, inputs, attrs):
            if attrs.get("mode", b"constant") not in (b"constant", "constant") or len(inputs) < 2:
                return None
            pads = self._constant(inputs[1])
            value = self._constant(inputs[2]) if len(inputs) > 2 and inputs[2] is not None else np.zeros(())
            if pads is None or value is None or value.size != 1 or (len(inputs) > 3 and inputs[3] is not None):
                return None
            rank = len(pads) // 2
            width = [int(v) for pair in zip(pads[:rank], pads[rank:]) for v in pair]
            return relax.op.nn.pad(inputs[0], width, pad_value=float(value.reshape(())))

    return BinaryAwareImporter


def import_to_relax(model: onnx.ModelProto, shape_dict: dict, path: str):
    """``(Relax module, provenance)``: params bound as constants; provenance maps each Relax
    variable name to the ONNX node it came from."""
    importer = _importer_class()(shape_dict, None, keep_params_in_input=False, sanitize=True)
    importer.provenance = {}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    try:
        with warnings.catch_warnings():
            # TVM renames every node name that is not a valid identifier (PyTorch's "/c1/Conv")
            # and warns once per node; the provenance keeps the ONNX names, so the noise goes
            warnings.filterwarnings("ignore", message="Renaming name", category=UserWarning)
            mod = importer.from_onnx(model.graph, opset)
    except Exception as err:
        raise BnnError(f"{path}: TVM's ONNX importer failed: {err}") from err
    return mod, complete_provenance(mod, importer.provenance)


def complete_provenance(mod, provenance: dict) -> dict:
    """Attribute the bindings TVM's block builder made by itself (normalising nested calls) to
    the node whose result binding follows them; tuple items belong to their tuple's node."""
    from tvm import relax

    full = dict(provenance)
    pending: list[str] = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            name, value = binding.var.name, binding.value
            if name in provenance:  # a node's result (a batch norm's first output included)
                full.update({p: provenance[name] for p in pending})
                pending = []
            elif isinstance(value, relax.TupleGetItem) and isinstance(value.tuple_value, relax.Var):
                owner = full.get(value.tuple_value.name)
                if owner is not None:
                    full[name] = owner
            else:
                pending.append(name)
    return full
