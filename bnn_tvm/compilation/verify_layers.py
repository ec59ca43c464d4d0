"""Per-layer verification: every compiled kernel run on ONNX Runtime's own values of its inputs.

End to end, a float layer (the stem, a downsampling shortcut, a DenseNet transition) sums in its
own order, so a binarizer after it can flip a value that lies within float rounding of its
threshold, and the flip spreads. To tell that from a compiler error, the model is cut into
segments at the tensors a compiled kernel materialises: every binarized tensor, every output of
a float layer (a float conv, matmul, pool or mean) and every model output. Each segment is the
part of the graph computing its output from the nearest such tensors (and from tensors an
earlier segment computes, such as a residual stream), which it reads from ONNX Runtime's run.

All segments are compiled together, once, as one model whose single input holds ONNX Runtime's
values of every segment input (sliced and reshaped back). A binarized input is binarized again
inside the segment (exactly the identity on its values), so that the compiler sees a binary
layer as in the whole model. Binary outputs must then be identical: no float layer lies between
a segment's inputs and its binarizers. Float outputs must agree within float rounding.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import BnnError
from .reference import NEAR_TIE, RELATIVE_TOLERANCE, near_ties, reference_outputs
from bnn_tvm.schedules.float_conv import FLOAT_KERNELS
from .compiler import PACKED_TENSOR, add_graph_outputs, compile_onnx

# Relax ops whose float result depends on a summation order (a batch norm is per channel: the
# kernels compute it in ONNX Runtime's order, and it folds into thresholds, so no cut there): a
# segment ends at their outputs, so that no float rounding lies inside a binary segment
FLOAT_LAYER_OPS = {
    "relax.nn.conv1d", "relax.nn.conv2d", "relax.nn.conv2d_transpose", "relax.matmul", "relax.mean",
    "relax.sum", "relax.prod", "relax.variance", "relax.nn.avg_pool1d", "relax.nn.avg_pool2d",
    "relax.nn.adaptive_avg_pool1d", "relax.nn.adaptive_avg_pool2d", "relax.nn.softmax", "relax.nn.layer_norm",
    "relax.nn.group_norm",
}
FED = "/ort"  # suffix of a segment input's name: ONNX Runtime's value of that tensor
INPUT = "ort_values"  # the segments model's one input
UNPERMUTED = "/unpermuted"  # suffix of a binarized tensor in its layout op's input layout
MIN_OPSET = 11  # Slice with inputs (10), Round (11)
SCALARS = {"zero": 0.0, "one": 1.0, "minus_one": -1.0}
CONSTANTS = {key: f"per_layer_{key}" for key in SCALARS}  # their initializers' names


@dataclass
class Segment:
    outputs: list  # the tensors it computes and is compared on (usually one)
    inputs: list  # the tensors it reads from ONNX Runtime's run
    nodes: set = field(default_factory=set)  # indices of the graph's nodes it computes


@dataclass
class SegmentResult:
    tensor: str
    binary: bool
    differing: int  # binary: values that differ
    rel_diff: float  # float: max diff relative to the reference's largest magnitude
    inputs: list
    # binary: how many of the differing values ONNX Runtime's binarizer input puts within
    # ``reference.NEAR_TIE`` of the threshold (float rounding inside the segment: a conv with a
    # folded non-power-of-two weight scale, a float layer, summing in its own order)
    near_ties: int = 0

    @property
    def exact(self) -> bool:
        return self.differing == 0 if self.binary else self.rel_diff <= RELATIVE_TOLERANCE

    @property
    def ok(self) -> bool:
        """Exact, or every differing binary value a near-tie of the float graph's own rounding."""
        return self.exact or (self.binary and self.differing == self.near_ties)


@dataclass
class PerLayerReport:
    results: list
    fused: list = field(default_factory=list)  # the segments model's fused kernels (as ``compile`` lists them)
    unchecked: dict = field(default_factory=dict)  # kernel -> how many of the whole model's the segments lack

    @property
    def exact(self) -> bool:
        """Every segment exact, or differing only at near-ties (``SegmentResult.ok``)."""
        return all(r.ok for r in self.results)

    def lines(self) -> list[str]:
        binary = [r for r in self.results if r.binary]
        floats = [r for r in self.results if not r.binary]
        head = (f"per layer: {len(self.results)} segments ({len(binary)} binary, {len(floats)} float), each compiled "
                "and run on ONNX Runtime's values of its inputs")
        missing = [f"{count} {kernel}" for kernel, count in self.unchecked.items()]
        note = [f"per layer: the segments compiled without {', '.join(missing)} of the whole model's kernels "
                "(checked end to end only)"] if missing else []
        ties = [r for r in self.results if not r.exact and r.ok]
        tie_lines = [f"segment {r.tensor} (binary, from {', '.join(r.inputs)}): {r.differing} values differ, all "
                     f"within {NEAR_TIE:g} of its input's range from the binarizer's threshold in ONNX Runtime: float rounding inside the "
                     "segment (a float conv, or a conv whose folded weight scale is not a power of two, summing in "
                     "its own order)" for r in ties]
        if self.exact:
            worst = max((r.rel_diff for r in floats), default=0.0)
            exact = "all exact" if not ties else f"{len(self.results) - len(ties)} exact, {len(ties)} at near-ties only"
            return [f"{head}: {exact} (binary outputs identical, float outputs max rel diff {worst:.3g})"] + tie_lines + note
        out = [f"{head}: {sum(not r.ok for r in self.results)} not exact"] + tie_lines + note
        for r in self.results:
            if r.ok:
                continue
            what = (f"{r.differing} values differ ({r.near_ties} of them near-ties)" if r.binary
                    else f"max rel diff {r.rel_diff:.3g} over the tolerance {RELATIVE_TOLERANCE:g}")
            out.append(f"segment {r.tensor} ({'binary' if r.binary else 'float'}, from {', '.join(r.inputs)}): {what} "
                       "on ONNX Runtime's inputs (a compiler error; please report it)")
        return out


def computed_node(named: list, kind: str | None, order: dict) -> str:
    """Of the ONNX nodes ``named`` behind a binding, the one whose output it computes: a pack's
    binarizer (``PACKED_TENSOR``'s position: the rewrite of ternary planes or a pair's halves names
    the layer reading the bits first), else the last of them in graph order (``order``)."""
    position = PACKED_TENSOR.get(kind)
    if position is not None and position < len(named) and named[position] in order:
        return named[position]
    return max((n for n in named if n in order), key=order.__getitem__)


def materialised_tensors(lowered) -> tuple[set, set]:
    """``(float layer outputs, all)``: the ONNX tensors the lowered model computes as a binding of
    its own (a kernel's output, with its fused epilogue's last op; a pack's binarized tensor; a
    Relax op), and among them those of a float layer: a float kernel of ours or a Relax op of
    ``FLOAT_LAYER_OPS``. Tensors inside a fused kernel (a chain folded into thresholds) are in
    neither."""
    import tvm
    from tvm import relax

    graph = lowered.onnx_model.graph
    order = {node.name: index for index, node in enumerate(graph.node)}
    floats, found = set(), set()
    for block in lowered.mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            named = lowered.onnx_nodes([binding.var.name])
            if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
                continue
            if not any(n in order for n in named):
                continue
            kind = lowered.kernel_kind(value)
            tensor = graph.node[order[computed_node(named, kind, order)]].output[0]
            found.add(tensor)
            if kind in FLOAT_KERNELS or value.op.name in FLOAT_LAYER_OPS:
                floats.add(tensor)
    return floats, found


def cut_into_segments(graph, binarized: set, float_outputs: set, outputs: set = frozenset(),
                      materialised: set | None = None) -> list[Segment]:
    """One segment per cut tensor (``binarized`` and ``float_outputs``), computing it from the
    nearest cut tensors, the graph input, and the ``materialised`` tensors (the whole model
    computes them once; None: every tensor) that an earlier segment computes: those are outputs
    of that segment too, compared, and read by the later ones (a residual stream). A chain of
    float ops that is not materialised (the whole model folds it into each binarizer's
    thresholds) is computed again by every segment that needs it.

    Binarized tensors go first: a float chain that a binarizer and a float layer both read is
    then the binarizer's, as the thresholds fold it. ``outputs`` (the model's) are compared too,
    but not cut at: a float output that a binarizer also reads is computed by one kernel and the
    binarizer by another, and both are checked only if the binarizer's segment computes them."""
    producer = {out: index for index, node in enumerate(graph.node) for out in node.output if out}
    cuts = set(binarized) | set(float_outputs)
    ordered = []
    for heads in (set(binarized), set(float_outputs) - set(binarized), set(outputs) - cuts):
        ordered += sorted((t for t in heads if t in producer), key=lambda t: producer[t])
    data_inputs = {i.name for i in graph.input} - {i.name for i in graph.initializer}  # some list weights as inputs
    owner: dict[int, Segment] = {}
    segments: list[Segment] = []
    for out in ordered:
        if producer[out] in owner:  # a model output an earlier segment computes
            owner[producer[out]].outputs.append(out)
            continue
        segment = Segment([out], [])
        stack = [out]
        while stack:
            tensor = stack.pop()
            index = producer.get(tensor)
            if index is None or index in segment.nodes:
                if index is None and tensor in data_inputs:
                    segment.inputs.append(tensor)
                continue
            shared = index in owner and (materialised is None or tensor in materialised)
            if (tensor != out and tensor in cuts) or shared:
                segment.inputs.append(tensor)
                continue
            segment.nodes.add(index)
            stack.extend(name for name in graph.node[index].input if name)
        segment.inputs = list(dict.fromkeys(segment.inputs))
        for index in segment.nodes:
            owner.setdefault(index, segment)
        segments.append(segment)
    for tensor in dict.fromkeys(t for segment in segments for t in segment.inputs):
        segment = owner.get(producer.get(tensor, -1))
        if segment is not None and tensor not in segment.outputs:
            segment.outputs.append(tensor)
    return segments


def rebinarizer(tensor: str, kind: str, fed: str, graph, crossable: bool = False) -> tuple[list, list]:
    """``(nodes, initializers)`` computing ``tensor + FED`` from ``fed`` (ONNX Runtime's values
    of the binarized ``tensor``) with a binarizer of the same kind, the identity on those values,
    so that the compiler sees the binary layer reading it as in the whole model; ``crossable``:
    of ops that layout transposes move across (Larq's ``Sign(Add(Sign(v), 0.1))``: ±1 to itself)."""
    out = tensor + FED
    if kind == "pack_sign" and crossable:
        offset = numpy_helper.from_array(np.array(0.1, np.float32), out + "_offset")
        nodes = [helper.make_node("Sign", [fed], [out + "_sign"], name=out + "_sign"),
                 helper.make_node("Add", [out + "_sign", offset.name], [out + "_add"], name=out + "_add"),
                 helper.make_node("Sign", [out + "_add"], [out], name=out)]
        return nodes, [offset]
    if kind == "pack_sign":  # +-1: -1 where < 0
        less = helper.make_node("Less", [fed, CONSTANTS["zero"]], [out + "_lt"], name=out + "_lt")
        return [less, helper.make_node("Where", [out + "_lt", CONSTANTS["minus_one"], CONSTANTS["one"]], [out],
                                       name=out)], []
    if kind in ("pack_sign_pair", "pack_ternary", "pack_heads", "pack_values"):  # -1, 0, +1
        return [helper.make_node("Sign", [fed], [out], name=out)], []
    quant = quant_nodes(tensor, graph)
    if quant is not None:
        return requantizer(quant, fed, out), []
    levels = out + "_levels"  # k/L: round(clip(v, 0, 1) * L) / L gives v back
    initializer = numpy_helper.from_array(np.array(level_count(tensor, graph), np.float32), levels)
    nodes, previous = [], fed
    for op, operand in (("Max", CONSTANTS["zero"]), ("Min", CONSTANTS["one"]), ("Mul", levels), ("Round", None)):
        result = f"{out}_{op.lower()}"
        nodes.append(helper.make_node(op, [previous] + ([operand] if operand else []), [result], name=result))
        previous = result
    return nodes + [helper.make_node("Div", [previous, levels], [out], name=out)], [initializer]


QUANT_OPS = ("Mul", "Sub", ("Round", "Ceil", "Floor"), "Min", "Max", "Add", "Div")  # output first


def quant_nodes(tensor: str, graph) -> list | None:
    """The nodes of an expanded QONNX ``Quant`` (``bnn_tvm.frontend.qonnx_quant``) computing ``tensor``,
    output first, or None when another form computes it."""
    producers = {out: node for node in graph.node for out in node.output}
    nodes, current = [], tensor
    for ops in QUANT_OPS:
        node = producers.get(current)
        if node is None or node.op_type not in (ops if isinstance(ops, tuple) else (ops,)):
            return None
        nodes.append(node)
        current = node.input[0]
    return nodes


def requantizer(nodes: list, fed: str, out: str) -> list:
    """``nodes`` (a ``Quant``'s, output first) again on ``fed``, rounding half to even: ``(q - z) *
    s`` quantizes back to itself (``((q - z) * s) / s + z`` lies within far less than 1/2 of the
    integer ``q``, maybe on either side, so a ``Ceil`` or ``Floor`` becomes a ``Round``), so the
    copy is the identity on ONNX Runtime's values and compiles to the same planes."""
    renamed = {nodes[-1].input[0]: fed, nodes[0].output[0]: out}
    copies = []
    for node in reversed(nodes):
        inputs = [renamed.get(name, name) for name in node.input]
        for name in node.output:
            renamed.setdefault(name, f"{out}_{name}")
        op = "Round" if node.op_type in QUANT_OPS[2] else node.op_type
        copies.append(helper.make_node(op, inputs, [renamed[name] for name in node.output],
                                       name=f"{out}_{node.name or node.output[0]}"))
    return copies


def level_count(tensor: str, graph) -> float:
    """``L`` of a k-bit activation ``round(clip(x, 0, 1) * L) / L``: its final division's constant."""
    node = next(n for n in graph.node if tensor in n.output)
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    if node.op_type != "Div" or node.input[1] not in constants or constants[node.input[1]].size != 1:
        raise BnnError(f"node {node.name!r}: a k-bit activation that does not end in a division by a constant")
    return float(constants[node.input[1]].reshape(()))


# ops a binarizer computes elementwise from one tensor (the others constants): tf2onnx's
# ``Sign(Add(Sign(x), 0.1))`` on the output of a layout transpose
ELEMENTWISE_OPS = {"Sign", "Add", "Sub", "Mul", "Div", "Neg", "Clip", "Identity"}


@dataclass
class Layout:
    """The layout op a binarized tensor is computed from elementwise: tf2onnx puts a Larq
    binarizer in NHWC between two transposes (on a 1x1 map, two reshapes that move unit axes).
    Such a segment input is fed in the op's input layout, laid out by the op and binarized by ops
    the layout ops move across, as in the whole model; such a segment output is compared after the
    inverse op: so the segment's layout ops cancel as the whole model's do, and its conv runs
    binary with the binarizer in its thresholds."""

    node: onnx.NodeProto  # a Transpose, or a Reshape that only moves axes of extent 1
    shape: tuple  # its input's shape

    def to_input(self, value: np.ndarray) -> np.ndarray:
        """``value`` (laid out by the op) in the op's input layout."""
        if self.node.op_type == "Transpose":
            return np.transpose(value, np.argsort(self.perm))
        return value.reshape(len(value), *self.shape[1:])

    def from_input(self, value: np.ndarray, shape: tuple) -> np.ndarray:
        """``value`` (in the op's input layout) laid out by the op, as ``shape``."""
        if self.node.op_type == "Transpose":
            return np.transpose(value, self.perm)
        return value.reshape(shape)

    @property
    def perm(self) -> list:
        return [int(a) for a in next(a.ints for a in self.node.attribute if a.name == "perm")]

    def inverse(self, tensor: str, out: str) -> tuple[onnx.NodeProto, list]:
        """``(node, initializers)`` computing ``out``, ``tensor`` in the op's input layout."""
        if self.node.op_type == "Transpose":
            return helper.make_node("Transpose", [tensor], [out], name=out,
                                    perm=[int(a) for a in np.argsort(self.perm)]), []
        shape = numpy_helper.from_array(np.array(self.shape, np.int64), out + "_shape")
        return helper.make_node("Reshape", [tensor, shape.name], [out], name=out), [shape]

    def forward(self, tensor: str, out: str) -> onnx.NodeProto:
        """The op itself on ``tensor``, computing ``out``."""
        node = onnx.NodeProto()
        node.CopyFrom(self.node)
        node.input[0], node.output[:], node.name = tensor, [out], out
        return node


def layout_ops(graph, tensors) -> dict:
    """``{tensor: layout op node}`` for those of ``tensors`` computed elementwise from a
    ``Transpose`` or ``Reshape`` output (``Layout``; a reshape qualifies once its shapes are known)."""
    producer = {out: node for node in graph.node for out in node.output if out}
    initializers = {i.name for i in graph.initializer}  # a segment has them all, not the Constant nodes
    constants = initializers | {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    found = {}
    for tensor in tensors:
        node = producer.get(tensor)
        while node is not None and node.op_type in ELEMENTWISE_OPS:
            data = [name for name in node.input if name and name not in constants]
            node = producer.get(data[0]) if len(data) == 1 else None
        initializer_shape = node is not None and node.op_type == "Reshape" and node.input[1] in initializers
        if node is not None and (node.op_type == "Transpose" or initializer_shape):
            found[tensor] = node
    return found


def layouts_of(ops: dict, shapes: dict) -> dict:
    """``{tensor: Layout}`` of ``layout_ops``: transposes, and reshapes that only move axes of
    extent 1 (a transpose of a 1x1 map); ``shapes`` has every tensor and its op's input."""
    def moves_unit_axes(before, after):
        return len(before) == len(after) and [d for d in before if d != 1] == [d for d in after if d != 1]

    return {t: Layout(node, tuple(shapes[node.input[0]])) for t, node in ops.items()
            if node.op_type == "Transpose" or moves_unit_axes(shapes[node.input[0]], shapes[t])}


def segments_model(model: onnx.ModelProto, segments: list[Segment], shapes: dict, kinds: dict,
                   layouts: dict) -> onnx.ModelProto:
    """All ``segments`` of ``model`` side by side, reading their inputs (of ``shapes``; where
    ``layouts`` has a ``Layout``, in its input layout) from one ``[1, total]`` input; binarized
    inputs (``kinds``: their pack kernel) binarized again."""
    graph = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < MIN_OPSET:
        raise BnnError(f"per-layer verification needs ONNX opset {MIN_OPSET} or later; the model declares {opset}")
    initializers = [numpy_helper.from_array(np.array(v, np.float32), CONSTANTS[k]) for k, v in SCALARS.items()]
    fed_tensors = list(dict.fromkeys(t for s in segments for t in s.inputs))
    nodes, offset = [], 0
    for tensor in fed_tensors:
        shape = layouts[tensor].shape if tensor in layouts else shapes[tensor]
        size = int(np.prod(shape))
        raw = tensor + FED + ("_raw" if tensor in kinds else "")
        bounds = {"starts": [0, offset], "ends": [1, offset + size], "axes": [0, 1], "shape": list(shape)}
        names = {key: f"{tensor}{FED}_{key}" for key in bounds}
        initializers += [numpy_helper.from_array(np.array(v, np.int64), names[k]) for k, v in bounds.items()]
        nodes.append(helper.make_node("Slice", [INPUT, names["starts"], names["ends"], names["axes"]], [raw + "_flat"],
                                      name=raw + "_flat"))
        layout = layouts.get(tensor) if tensor in kinds else None
        nodes.append(helper.make_node("Reshape", [raw + "_flat", names["shape"]], [raw if layout is None else
                                                                                   raw + UNPERMUTED], name=raw + "_shaped"))
        if layout is not None:  # laid out as in the whole model, then binarized by ops the layout ops cross
            nodes.append(layout.forward(raw + UNPERMUTED, raw))
        if tensor in kinds:
            more_nodes, more_initializers = rebinarizer(tensor, kinds[tensor], raw, graph, crossable=layout is not None)
            nodes += more_nodes
            initializers += more_initializers
        offset += size
    emitted: set[int] = set()
    for number, segment in enumerate(segments):  # graph order within a segment; across segments only fed tensors
        renamed = {name: name + FED for name in segment.inputs}
        for index in sorted(segment.nodes):
            node = onnx.NodeProto()
            node.CopyFrom(graph.node[index])
            node.input[:] = [renamed.get(name, name) for name in node.input]
            if index in emitted:  # a chain another segment computes too: its own copy
                for position, name in enumerate(node.output):
                    renamed[name] = node.output[position] = f"{name}/segment{number}" if name else name
                node.name = f"{node.name}/segment{number}"
            emitted.add(index)
            nodes.append(node)
    for tensor in (t for s in segments for t in s.outputs if t in layouts):  # its layout ops cancel
        node, more_initializers = layouts[tensor].inverse(tensor, tensor + UNPERMUTED)
        nodes.append(node)
        initializers += more_initializers
    outputs = [helper.make_empty_tensor_value_info(t + (UNPERMUTED if t in layouts else ""))
               for s in segments for t in s.outputs]
    inputs = [helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, [1, offset])]
    weights = list(graph.initializer) + initializers
    new_graph = helper.make_graph(nodes, "segments", inputs, outputs, initializer=weights)
    result = helper.make_model(new_graph, opset_imports=list(model.opset_import))
    result.ir_version = model.ir_version
    return result


def verify_per_layer(
    lowered, reference_model: onnx.ModelProto, x: np.ndarray, target: str, sign_zero: str = "exact",
    progress: bool = False, run=None, whole_kernels: dict | None = None, standalone: bool = False,
) -> PerLayerReport:
    """Cut ``lowered``'s model into segments, compile them once, run each on ONNX Runtime's
    (``reference_model``: the pinned graph the reference runs, ``Sign(0) = +1`` under
    ``--sign-zero plus``) values of its inputs on ``x`` and compare. ``run(compiled, row)``: the
    compiled segments' outputs for one ``[1, total]`` row (here, or on a board); ``whole_kernels``:
    the whole model's kernel calls by kind, to name those the segments did not compile to; ``standalone``:
    the segments compiled as a standalone library, as the whole model was."""
    graph = lowered.onnx_model.graph
    floats, materialised = materialised_tensors(lowered)
    # a binarized tensor the whole model computes inside a kernel (tf2onnx's inner ``Sign`` of
    # ``Sign(Add(Sign(x), 0.1))``, folded with the outer one into a conv's thresholds) is no cut
    kinds = {t: kind for t, kind in lowered.packed_kinds().items() if t in materialised}
    segments = cut_into_segments(graph, set(kinds), floats, {o.name for o in graph.output}, materialised)
    fed = list(dict.fromkeys(t for s in segments for t in s.inputs))
    outputs = [t for s in segments for t in s.outputs]
    batch = lowered.input_shape[0]
    x = whole_chunks(x, batch)
    chunks = len(x) // batch
    ops = layout_ops(graph, kinds)
    layout_inputs = [ops[t].input[0] for t in fed + outputs if t in ops]
    values = reference_values(reference_model, list(dict.fromkeys(fed + outputs + layout_inputs)), x,
                              lowered.input_name, batch)
    shapes = {t: (len(v) // chunks, *v.shape[1:]) for t, v in values.items()}
    layouts = layouts_of({t: node for t, node in ops.items() if t in shapes}, shapes)
    model = segments_model(lowered.onnx_model, segments, shapes, kinds, layouts)
    with tempfile.TemporaryDirectory(prefix="bnn-per-layer-") as folder:
        path = os.path.join(folder, "segments.onnx")
        onnx.save(model, path)
        compiled = compile_onnx(path, target, progress=progress, sign_zero=sign_zero, standalone=standalone)
    def fed_value(tensor, chunk):
        value = part(values[tensor], chunk, chunks)
        return layouts[tensor].to_input(value) if tensor in layouts else value

    ours = [run(compiled, np.concatenate([fed_value(t, c).reshape(-1) for t in fed])[None])
            for c in range(chunks)]  # one compiled batch's segment inputs per run, as one row
    ours_of = {t: np.concatenate([o[i] for o in ours]) for i, t in enumerate(outputs)}
    ours_of.update({t: layouts[t].from_input(ours_of[t], values[t].shape) for t in outputs if t in layouts})
    results = []
    for segment in segments:
        for tensor in segment.outputs:
            results.append(compare_segment(tensor, tensor in kinds, ours_of[tensor], values[tensor], segment.inputs))
    count_near_ties(results, ours_of, values, reference_model, x, lowered.input_name, batch)
    fused = compiled.metadata["fused"]
    return PerLayerReport(results, fused, unchecked_kernels(whole_kernels, compiled.metadata["kernels"]))


# ops that sum many terms in an order of their own (ONNX Runtime's and the kernel's may differ):
# only behind one can a near-tie differ without a compiler error
SUMMING_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "AveragePool", "GlobalAveragePool", "ReduceMean",
               "ReduceSum", "LpPool", "Einsum"}


def sums_before(graph, tensor: str, stops: set) -> bool:
    """Whether a ``SUMMING_OPS`` node lies between ``stops`` (a segment's inputs) and ``tensor``."""
    producer = {out: node for node in graph.node for out in node.output}
    frontier, seen = [tensor], set()
    while frontier:
        name = frontier.pop()
        if name in seen or name in stops or name not in producer:
            continue
        seen.add(name)
        node = producer[name]
        if node.op_type in SUMMING_OPS:
            return True
        frontier.extend(node.input)
    return False


def count_near_ties(results: list, ours: dict, theirs: dict, reference_model, x, input_name: str, batch: int) -> None:
    """Set ``near_ties`` of each binary segment that differs (``reference.near_ties`` on the
    reference) where a summing op inside the segment can explain them; elsewhere (only
    elementwise ops, which both sides round alike) every difference stays a compiler error."""
    differing = [r for r in results if r.binary and r.differing
                 and sums_before(reference_model.graph, r.tensor, set(r.inputs))]
    if not differing:
        return
    masks = near_ties(reference_model, [r.tensor for r in differing], x, input_name, batch)
    for r in differing:
        mask = masks.get(r.tensor)
        diff = ours[r.tensor] != theirs[r.tensor]
        if mask is not None and mask.shape == diff.shape:
            r.near_ties = int((diff & mask).sum())


def unchecked_kernels(whole: dict, segments: dict) -> dict:
    """Kernels (``{kind: calls}``, as ``LoweredModel.kernel_calls`` counts them) the whole model
    calls more often than the segments model; packs are left out (the segments pack their
    binarized inputs again)."""
    from collections import Counter

    lacking = Counter(whole) - Counter(segments)
    return {kernel: count for kernel, count in lacking.items() if kernel not in PACKED_TENSOR}


def reference_values(model: onnx.ModelProto, tensors: list, x: np.ndarray, input_name: str, batch: int) -> dict:
    """ONNX Runtime's values of ``tensors`` on ``x``, in chunks of the pinned ``model``'s batch."""
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    del probe.graph.output[:]
    add_graph_outputs(probe, tensors)
    return dict(zip(tensors, reference_outputs(probe, x, input_name, batch)))


def whole_chunks(x: np.ndarray, batch: int) -> np.ndarray:
    """``x`` cut to a whole number of compiled batches (repeated when shorter than one)."""
    if len(x) < batch:
        return np.resize(x, (batch, *x.shape[1:]))
    return x[: len(x) // batch * batch]


def part(value: np.ndarray, index: int, chunks: int) -> np.ndarray:
    """Chunk ``index`` of ``chunks`` equal parts of ``value`` along its first axis."""
    rows = len(value) // chunks
    return value[index * rows:(index + 1) * rows]


def compare_segment(tensor: str, binary: bool, ours: np.ndarray, theirs: np.ndarray, inputs: list) -> SegmentResult:
    if binary:
        return SegmentResult(tensor, True, int(np.sum(ours != theirs)), 0.0, inputs)
    diff = float(np.max(np.abs(ours.astype(np.float64) - theirs))) if theirs.size else 0.0
    scale = max(float(np.max(np.abs(theirs))) if theirs.size else 0.0, np.finfo(np.float32).tiny)
    return SegmentResult(tensor, False, 0, diff / scale, inputs)
