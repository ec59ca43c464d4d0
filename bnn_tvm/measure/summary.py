"""Per-layer precision, parameter memory and MACs of a binarized model (Larq's ``models.summary``).

A model is a zoo name, a training checkpoint (``.pt``) or an ONNX file. Per layer that holds
parameters or does multiply-accumulates: the precision of its inputs and weights, its parameters
by bit width, their memory, and its MACs by precision (a MAC is as wide as the wider of its two
operands: 1-bit only when inputs and weights are both binary). Totals give the model size, its
float-32 equivalent (every parameter at 32 bits) and the compression ratio between them.

What counts as a parameter, in both sources alike:
- binary conv/dense weights at 1 bit; every other weight, bias, batch-norm scale, shift, running
  mean and variance, RSign threshold and RPReLU parameter at 32 bits;
- the per-output-channel scale of ``magnitude_aware_sign`` / ``libra_pb_weight`` weights at
  32 bits: computed from the latent weights during training, stored beside the ±1 weights when
  deployed (in ONNX it is the ``Mul`` after the conv); so is a layer's one learned scale
  (BiPointNet) and a ``PReLU``'s single slope;
- not counted: other scalar graph constants (binarizer 0/+1/-1, DoReFa levels), integer shape
  tensors, and the all-zero conv bias the ONNX exporter adds to a bias-free conv.
MACs are per sample (batch 1).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from bnn_tvm.relay_passes.conventions import SCALE_SPREAD

from ..errors import BnnError

FLOAT_BITS = 32


@dataclass
class LayerStats:
    name: str
    kind: str  # module class or ONNX op type
    output_shape: list[int]  # per sample
    input_bits: int | None = None  # None: the layer has no weighted inputs (BN, scale, threshold)
    weight_bits: int | None = None
    params: dict[int, int] = field(default_factory=dict)  # bits -> count
    macs: dict[int, int] = field(default_factory=dict)  # bits -> count

    @property
    def memory_bits(self) -> int:
        return sum(bits * count for bits, count in self.params.items())

    @property
    def is_float_compute(self) -> bool:
        """A conv/dense whose weights are not binary."""
        return self.weight_bits is not None and self.weight_bits > 1

    def add_params(self, bits: int, count: int) -> None:
        if count:
            self.params[bits] = self.params.get(bits, 0) + int(count)

    def add_macs(self, count: int) -> None:
        bits = max(self.input_bits or FLOAT_BITS, self.weight_bits or FLOAT_BITS)
        if count:
            self.macs[bits] = self.macs.get(bits, 0) + int(count)


@dataclass
class ModelSummary:
    model: str
    source: str  # "zoo", "checkpoint" or "onnx"
    input_shape: list[int]
    layers: list[LayerStats]

    def params_by_bits(self) -> dict[int, int]:
        return _merge(layer.params for layer in self.layers)

    def macs_by_bits(self) -> dict[int, int]:
        return _merge(layer.macs for layer in self.layers)

    @property
    def total_params(self) -> int:
        return sum(self.params_by_bits().values())

    @property
    def memory_bits(self) -> int:
        return sum(layer.memory_bits for layer in self.layers)

    @property
    def float32_bits(self) -> int:
        return self.total_params * FLOAT_BITS

    @property
    def compression_ratio(self) -> float:
        return self.float32_bits / self.memory_bits if self.memory_bits else 1.0

    @property
    def binary_mac_fraction(self) -> float:
        macs = self.macs_by_bits()
        total = sum(macs.values())
        return macs.get(1, 0) / total if total else 0.0

    @property
    def float_layers(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.is_float_compute]

    def to_dict(self) -> dict:
        layers = []
        for layer in self.layers:
            row = asdict(layer)
            row["params"] = _str_keys(layer.params)
            row["macs"] = _str_keys(layer.macs)
            row["memory_bytes"] = layer.memory_bits / 8
            layers.append(row)
        return {
            "model": self.model,
            "source": self.source,
            "input_shape": self.input_shape,
            "layers": layers,
            "total_params": self.total_params,
            "params_by_bits": _str_keys(self.params_by_bits()),
            "model_size_bytes": self.memory_bits / 8,
            "float32_size_bytes": self.float32_bits / 8,
            "compression_ratio": self.compression_ratio,
            "macs_by_bits": _str_keys(self.macs_by_bits()),
            "binary_mac_fraction": self.binary_mac_fraction,
            "float_layers": self.float_layers,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        return "\n".join(_table_lines(self))


def _merge(dicts) -> dict[int, int]:
    merged: dict[int, int] = {}
    for d in dicts:
        for bits, count in d.items():
            merged[bits] = merged.get(bits, 0) + count
    return dict(sorted(merged.items()))


def _str_keys(d: dict[int, int]) -> dict[str, int]:
    return {str(bits): count for bits, count in sorted(d.items())}


# Text rendering --------------------------------------------------------------------------------
def _si(value: float) -> str:
    for limit, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(value) >= limit:
            return f"{value / limit:.2f}{suffix}"
    return f"{value:g}"


def _bytes(n_bytes: float) -> str:
    for limit, unit in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n_bytes >= limit:
            return f"{n_bytes / limit:.2f} {unit}"
    return f"{n_bytes:g} B"


def _table_lines(summary: ModelSummary) -> list[str]:
    param_bits = sorted(summary.params_by_bits())
    mac_bits = sorted(summary.macs_by_bits())
    header = ["Layer", "Type", "In bits", "W bits", "Output"]
    header += [f"# {b}-bit" for b in param_bits] + ["Memory (kB)"] + [f"{b}-bit MACs" for b in mac_bits]

    def row(layer: LayerStats) -> list[str]:
        cells = [
            layer.name,
            layer.kind,
            "-" if layer.input_bits is None else str(layer.input_bits),
            "-" if layer.weight_bits is None else str(layer.weight_bits),
            "x".join(map(str, layer.output_shape)),
        ]
        cells += [str(layer.params.get(b, 0)) for b in param_bits]
        cells.append(f"{layer.memory_bits / 8 / 1000:.2f}")
        return cells + [str(layer.macs.get(b, 0)) for b in mac_bits]

    totals = ["Total", "", "", "", ""]
    totals += [str(summary.params_by_bits()[b]) for b in param_bits]
    totals.append(f"{summary.memory_bits / 8 / 1000:.2f}")
    totals += [str(summary.macs_by_bits()[b]) for b in mac_bits]
    rows = [header] + [row(layer) for layer in summary.layers] + [totals]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]

    def fmt(cells):  # names and types left-aligned, numbers right-aligned
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(fmt(header))
    shape = "x".join(map(str, summary.input_shape))
    lines = [f"{summary.model} ({summary.source}), input {shape}", rule, fmt(header), rule]
    lines += [fmt(r) for r in rows[1:-1]] + [rule, fmt(totals), rule]
    params = summary.params_by_bits()
    split = ", ".join(f"{b}-bit {_si(c)}" for b, c in params.items())
    macs = summary.macs_by_bits()
    floats = [layer for layer in summary.layers if layer.is_float_compute]
    lines += [
        f"Total params                {_si(summary.total_params)} ({split})",
        f"Model size                  {_bytes(summary.memory_bits / 8)}",
        f"Float-32 equivalent         {_bytes(summary.float32_bits / 8)}",
        f"Compression ratio vs fp32   {summary.compression_ratio:.2f}x",
        f"MACs                        {_si(sum(macs.values()))} ("
        + ", ".join(f"{b}-bit {_si(c)}" for b, c in macs.items())
        + f"); binarized fraction {summary.binary_mac_fraction:.4f}",
        f"Float layers ({len(floats)})".ljust(28) + (", ".join(f"{l.name} ({l.kind})" for l in floats) or "none"),
    ]
    return lines


# PyTorch modules -------------------------------------------------------------------------------
def summarize_module(model, input_shape: tuple[int, ...], name: str, source: str) -> ModelSummary:
    """Summary of a PyTorch model; one forward pass (batch 1, eval mode) gives the shapes."""
    import torch

    from ..training.layers import BinaryActivation, _BinaryMixin

    model = model.eval()
    units = {}  # module -> qualified name; binary layers count as one unit with their quantizers
    for qualified, module in model.named_modules():
        if any(qualified.startswith(parent + ".") for parent in units.values()):
            continue
        if isinstance(module, (_BinaryMixin, BinaryActivation)) or not any(module.children()):
            units[module] = qualified or type(module).__name__
    shapes = {}
    hooks = [m.register_forward_hook(_record_shape(shapes, m)) for m in units]
    try:
        with torch.no_grad():
            model(torch.zeros((1,) + tuple(input_shape)))
    finally:
        for hook in hooks:
            hook.remove()
    layers = []
    for module, qualified in units.items():
        if module not in shapes:
            continue  # not called in forward (unused)
        layer = _module_stats(module, qualified, *shapes[module])
        if layer.params or layer.macs:
            layers.append(layer)
    return ModelSummary(name, source, list(input_shape), layers)


def _record_shape(shapes: dict, module):
    def hook(_module, inputs, output):
        if module not in shapes:  # a module used twice is summarised at its first use
            shapes[module] = (tuple(inputs[0].shape), tuple(output.shape))

    return hook


def _module_stats(module, qualified: str, in_shape, out_shape) -> LayerStats:
    from torch import nn

    from ..training.layers import _BinaryMixin

    layer = LayerStats(qualified, type(module).__name__, list(out_shape[1:]))
    weighted = isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear))
    if weighted:
        # published forms' binary layers (``published_models``) state their bits as attributes
        binary = isinstance(module, _BinaryMixin) or getattr(module, "weight_bits", None) is not None
        layer.input_bits = module.input_bits if binary else FLOAT_BITS
        layer.weight_bits = module.weight_bits if binary else FLOAT_BITS
        if binary and module.has_channel_scale:
            layer.add_params(FLOAT_BITS, module.weight.shape[0])
    for pname, param in module.named_parameters():
        bits = layer.weight_bits if weighted and pname == "weight" else FLOAT_BITS
        layer.add_params(bits, param.numel())
    for bname, buffer in module.named_buffers():
        if bname.split(".")[-1] in ("running_mean", "running_var"):
            layer.add_params(FLOAT_BITS, buffer.numel())
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        taps = math.prod(module.kernel_size)
        layer.add_macs(math.prod(out_shape[1:]) * (module.in_channels // module.groups) * taps)
    elif isinstance(module, nn.Linear):
        layer.add_macs(math.prod(out_shape[1:]) * module.in_features)
    elif hasattr(module, "summary_macs"):  # a matmul of two activations (BiBERT's attention)
        layer.input_bits, layer.weight_bits = module.input_bits, module.weight_bits
        layer.add_macs(module.summary_macs(in_shape, out_shape))
    return layer


# ONNX files ------------------------------------------------------------------------------------
WEIGHTED_OPS = {"Conv": 1, "Gemm": 1, "MatMul": 1}  # op -> index of the weight input
COMPARE_OPS = {"Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Equal"}
PASS_THROUGH_OPS = {"Pad", "Reshape", "Flatten", "MaxPool", "Transpose", "Identity", "Squeeze", "Unsqueeze"}


def summarize_onnx(path: str) -> ModelSummary:
    """Summary of an ONNX file: weights from its initializers, shapes by ONNX shape inference."""
    import onnx
    from onnx import numpy_helper

    from ..frontend.masked_fill import masked_fills_as_where
    from ..frontend.onnx_import import constants_to_initializers, graph_input, load_onnx, pin_input_shape

    model = constants_to_initializers(load_onnx(path))
    input_name, dims = graph_input(model, path)
    if any(d is None for d in dims[1:]):
        raise BnnError(f"{path}: input {input_name!r} has a symbolic non-batch dimension {dims}")
    model = pin_input_shape(model, input_name, [1, *dims[1:]])
    # shapes inferred before the folding (a traced ``repeat(batch, 1)``'s ``Tile``, now a constant,
    # still of unknown batch) would stand: infer them anew
    del model.graph.value_info[:]
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as err:  # onnx raises several types here
        raise BnnError(f"{path}: ONNX shape inference failed: {err}") from err
    masked_fills_as_where(model)  # torch.export's out[mask] = c, as the compiler reads it
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    shapes = _value_shapes(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    counted: set[str] = set()
    layers = []
    for index, node in enumerate(model.graph.node):
        layer = _node_stats(node, index, constants, shapes, producers, counted, path)
        if layer.params or layer.macs:
            layers.append(layer)
    return ModelSummary(os.path.basename(path), "onnx", list(dims[1:]), layers)


def _value_shapes(model) -> dict[str, list[int]]:
    shapes = {}
    for info in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        dims = info.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[info.name] = [d.dim_value for d in dims]
    return shapes


def _is_parameter(value: np.ndarray) -> bool:
    return value.dtype.kind == "f" and value.size > 1


def _node_stats(node, index, constants, shapes, producers, counted, path) -> LayerStats:
    out_shape = shapes.get(node.output[0]) if node.output else None
    layer = LayerStats(node.name or f"{node.op_type}_{index}", node.op_type, list((out_shape or [1])[1:]))
    weight_index = WEIGHTED_OPS.get(node.op_type)
    weight = constants.get(node.input[weight_index]) if weight_index is not None else None
    if weight is not None:
        layer.input_bits = _activation_bits(node.input[0], producers, constants)
        scales = _channel_scales(node, weight)
        layer.weight_bits = 1 if scales is not None else FLOAT_BITS
        if scales is not None and not np.all(scales == 1):
            layer.add_params(FLOAT_BITS, scales.size)  # ±alpha: one float scale per output channel
    # a binarizer's ±1 (folded ``ones_like`` tensors) are not parameters
    binarizer = node.op_type == "Where" and _is_binarizer(node, producers, constants)
    for position, name in enumerate(node.input):
        value = constants.get(name)
        if value is None or name in counted or binarizer:
            continue
        if not (_is_parameter(value) or _is_learned_scalar(node, position, value, producers)):
            continue
        if position == 2 and weight is not None and not np.any(value):
            continue  # the exporter's zero bias of a bias-free conv
        counted.add(name)
        layer.add_params(layer.weight_bits if position == weight_index else FLOAT_BITS, value.size)
    if weight is not None:
        if out_shape is None:
            raise BnnError(f"{path}: node {layer.name!r} ({node.op_type}): output shape unknown after inference")
        layer.add_macs(_node_macs(node, weight, out_shape))
    elif node.op_type == "MatMul" and node.input[0] not in constants:
        _activation_matmul_stats(layer, node, shapes, producers, constants, path)
    return layer


def _activation_matmul_stats(layer: LayerStats, node, shapes, producers, constants, path) -> None:
    """A ``MatMul`` of two activations (an attention's ``Q K^T`` and ``A V``): each operand's
    bits as its producer gives them, ``out elements x K`` MACs with ``K`` the last axis of A."""
    a_shape, out_shape = shapes.get(node.input[0]), shapes.get(node.output[0])
    if a_shape is None or out_shape is None:
        raise BnnError(f"{path}: node {layer.name!r} (MatMul): operand shapes unknown after inference")
    layer.input_bits = _activation_bits(node.input[0], producers, constants)
    layer.weight_bits = _activation_bits(node.input[1], producers, constants)
    layer.add_macs(math.prod(out_shape) * a_shape[-1])  # batch 1: every element is the sample's


def _node_macs(node, weight: np.ndarray, out_shape: list[int]) -> int:
    """MACs of one sample: the graph is pinned to batch 1, so every output element is the
    sample's, also where the first axis is not the batch (a point MLP's ``[B*N, C]`` rows)."""
    per_sample = math.prod(out_shape)
    if node.op_type == "Conv":
        return per_sample * math.prod(weight.shape[1:])  # weight [OC, C/groups, kh, kw]
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return per_sample * weight.shape[1 if trans_b else 0]
    return per_sample * weight.shape[-2]  # MatMul: [..., K, N]


def _is_learned_scalar(node, position: int, value: np.ndarray, producers: dict) -> bool:
    """A one-element float that is a parameter, not a graph constant: a ``PRelu``'s single slope,
    or a ``Mul`` by one scale right after a conv/dense (BiPointNet's layer-wise scale)."""
    if value.dtype.kind != "f" or value.size != 1:
        return False
    if node.op_type == "PRelu":
        return position == 1
    return node.op_type == "Mul" and _op_of(node.input[1 - position], producers) in WEIGHTED_OPS


def _channel_scales(node, weight: np.ndarray) -> np.ndarray | None:
    """Per output channel ``alpha`` when the weight is ``±alpha`` per output channel (±1: all
    ones; an exporter that folds a batch norm into binary weights gives other alphas), else None.
    ``|w|`` may spread by ``SCALE_SPREAD`` of ``alpha`` in a channel, as the compiler allows
    (``alpha * sign(W)`` computed in float32, BiBERT's weight estimator: a few ulp off)."""
    if weight.size == 0 or weight.ndim < 2:
        return None
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    axis = 0 if node.op_type == "Conv" or (node.op_type == "Gemm" and trans_b) else weight.ndim - 1
    magnitudes = np.moveaxis(np.abs(weight), axis, 0).reshape(weight.shape[axis], -1)
    scales = np.median(magnitudes, axis=1).astype(np.float32)
    spread = np.abs(magnitudes.astype(np.float64) - scales[:, None])
    if np.any(scales == 0) or not np.all(spread <= SCALE_SPREAD * scales[:, None]):
        return None
    return scales


def _is_binarizer(node, producers: dict, constants: dict) -> bool:
    """``Where(x >= 0, 1, -1)`` (or ``>``), the ±1 as scalars or full tensors."""
    compare = producers.get(node.input[0])
    return (compare is not None and compare.op_type in ("GreaterOrEqual", "Greater")
            and _uniform_value(node.input[1], producers, constants) == 1
            and _uniform_value(node.input[2], producers, constants) == -1)


def _is_zero_mean_sign(node, producers: dict, constants: dict) -> bool:
    """BiBERT's ``ZMeanBinaryQuantizer``: ``Where(Equal(Sign(x), -1), 0, Sign(x))``, 0/1 values."""
    equal, sign = producers.get(node.input[0]), producers.get(node.input[2])
    while equal is not None and equal.op_type == "Cast":  # the exporter's Cast to bool
        equal = producers.get(equal.input[0])
    return (sign is not None and sign.op_type == "Sign" and equal is not None and equal.op_type == "Equal"
            and equal.input[0] == node.input[2] and _uniform_value(equal.input[1], producers, constants) == -1
            and _uniform_value(node.input[1], producers, constants) == 0)


def _uniform_value(name: str, producers: dict, constants: dict) -> float | None:
    """The value of a tensor whose elements are all one constant: an initializer, or PyTorch's
    ``ones_like`` (``ConstantOfShape`` or ``Expand`` of a scalar), possibly negated."""
    if name in constants:
        values = constants[name]
        return float(values.flat[0]) if values.size and np.all(values == values.flat[0]) else None
    node = producers.get(name)
    if node is None:
        return None
    if node.op_type == "ConstantOfShape":
        from onnx import numpy_helper

        fill = next((a.t for a in node.attribute if a.name == "value"), None)
        return float(numpy_helper.to_array(fill).flat[0]) if fill is not None else 0.0
    if node.op_type == "Expand":
        return _uniform_value(node.input[0], producers, constants)
    if node.op_type == "Neg":
        inner = _uniform_value(node.input[0], producers, constants)
        return None if inner is None else -inner
    return None


def _op_of(name: str, producers: dict) -> str | None:
    node = producers.get(name)
    return None if node is None else node.op_type


def _zero_term_sum(node, producers: dict, constants: dict) -> str | None:
    """``x`` of ``x + c * e`` (either order) with ``c`` a constant of zeros, else None."""
    for kept, term in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
        product = producers.get(term)
        if product is not None and product.op_type == "Mul" and any(
                name in constants and constants[name].size and not np.any(constants[name]) for name in product.input):
            return kept
    return None


def _scaled_binary(node, producers: dict, constants: dict) -> str | None:
    """The binary operand of ``scale * b`` where ``scale`` is a constant or a ``ReduceMean`` (a
    per-sample or per-channel magnitude, broadcast), else None. The ``Add`` of a scaled
    straight-through estimator, ``(scale * Sign(u) - P) + P``, reaches it through
    ``_straight_through_sign``'s match on the ``Mul``."""
    for binary, scale in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
        if (scale in constants or _op_of(scale, producers) == "ReduceMean") \
                and _activation_bits(binary, producers, constants) == 1:
            return binary
    return None


def _straight_through_sign(node, producers: dict):
    """The ``Sign`` node of a straight-through estimator ``(Sign(u) - P) + P`` (or
    ``P + (Sign(u) - P)``; BiBench's ``sign(x).detach() - clamp(x).detach() + clamp(x)``), else None.
    Its forward value is ``sign(u)``: exactly so in float32 when ``P`` has the sign of ``u`` and
    ``|P| <= 1``, which ``lower_straight_through`` proves for each graph it compiles; a summary
    counts the model as its training code defines it, 1-bit behind its binarizer."""
    for diff_name, p_name in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
        diff = producers.get(diff_name)
        if diff is not None and diff.op_type == "Sub" and diff.input[1] == p_name:
            sign = producers.get(diff.input[0])
            if sign is not None and sign.op_type == "Mul":  # XNOR-Net's scale inside: (beta * Sign(u) - P) + P
                sign = next((producers.get(i) for i in sign.input if _op_of(i, producers) == "Sign"), None)
            if sign is not None and sign.op_type == "Sign":
                return sign
    return None


def _activation_bits(name: str, producers: dict, constants: dict) -> int:
    """Bits of the values in tensor ``name``: 1 behind a binarizer, k behind DoReFa, else 32."""
    node = producers.get(name)
    if node is None:
        return FLOAT_BITS
    if node.op_type == "Sign":
        return 1
    if node.op_type == "Where":
        binary = _is_binarizer(node, producers, constants) or _is_zero_mean_sign(node, producers, constants)
        return 1 if binary else FLOAT_BITS
    if node.op_type == "Cast" and _op_of(node.input[0], producers) in COMPARE_OPS:
        return 1  # a comparison's 0/1 (Bi-Attention's boolean attention)
    if node.op_type == "Add" and _straight_through_sign(node, producers) is not None:
        return 1
    if node.op_type == "Add":  # FDA's sign(a) + alpha * noise(a) with alpha decayed to 0: sign(a)
        kept = _zero_term_sum(node, producers, constants)
        if kept is not None:
            return _activation_bits(kept, producers, constants)
    if node.op_type == "Mul":  # a binary tensor times its scale (XNOR-Net's mean|x|, a weight's alpha)
        scaled = _scaled_binary(node, producers, constants)
        if scaled is not None:
            return _activation_bits(scaled, producers, constants)
    if node.op_type == "Pad":
        pad_value = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(1)
        inner = _activation_bits(node.input[0], producers, constants)
        return inner if pad_value is not None and np.all(np.abs(pad_value) <= 1) else FLOAT_BITS
    if node.op_type in PASS_THROUGH_OPS:
        return _activation_bits(node.input[0], producers, constants)
    if node.op_type == "Div":  # DoReFa: round(clip(x, 0, 1) * L) / L with L = 2^k - 1
        levels = constants.get(node.input[1])
        rounded = producers.get(node.input[0])
        if levels is not None and levels.size == 1 and rounded is not None and rounded.op_type == "Round":
            bits = math.log2(float(levels.reshape(())) + 1)
            if bits.is_integer() and bits >= 1:
                return int(bits)
    return FLOAT_BITS


# Entry point -----------------------------------------------------------------------------------
def summarize(model: str) -> ModelSummary:
    """Summary of a zoo model name, a checkpoint (.pt/.pth/.ckpt) or an ONNX file."""
    from ..training import models
    from ..frontend.export import is_checkpoint, not_a_model

    if os.path.isfile(model):
        if is_checkpoint(model):
            from ..training.train import load_checkpoint

            module, checkpoint = load_checkpoint(model)
            shape = models.input_shape(checkpoint["model"])
            return summarize_module(module, shape, os.path.basename(model), "checkpoint")
        return summarize_onnx(model)
    if model in models.ZOO:
        return summarize_module(models.build(model), models.input_shape(model), model, "zoo")
    raise not_a_model(model)
