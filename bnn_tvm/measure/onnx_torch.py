"""Run an ONNX graph in PyTorch, node by node: the ``torch_fp32`` engine of ``bench`` for a bare
ONNX file, which has no PyTorch model behind it.

``torch_module(model)`` is a ``torch.nn.Module`` whose initializers are buffers (so ``.to(device)``
and ``.to(memory_format=...)`` move them) and whose ``forward`` evaluates the graph's nodes in
order with ``torch.nn.functional`` ops, following the ONNX operator definitions: the same float
arithmetic as ONNX Runtime up to summation order, binarizers included (``Where(x >= 0, 1, -1)``
runs as a float compare and select, as in any float engine). The model is read the way the
compiler reads it (``compiler.read_pinned``: input shape pinned, shape arithmetic folded):
most ``Shape``/``ConstantOfShape`` chains are constants by then, and those left run as ops.

An op outside ``OPS`` (or an attribute form it does not implement) raises a ``BnnError`` naming
the node; ``bench`` reports it as the engine's error and measures the others.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import BnnError
from ..compilation.compiler import read_pinned


def attributes(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _unsupported(node, what: str):
    return BnnError(f"node {node.name or '<unnamed>'!r} ({node.op_type}): {what} is not supported by the ONNX->PyTorch runner")


def _same_pads(pads: list[int], dims: int):
    """ONNX ``pads`` ``[x1_begin, x2_begin, ..., x1_end, x2_end, ...]``: the symmetric per-axis
    padding, or None when begin and end differ."""
    pads = list(pads) or [0] * (2 * dims)
    begin, end = pads[:dims], pads[dims:]
    return begin if begin == end else None


def _torch_pad_arg(pads: list[int], dims: int) -> list[int]:
    """ONNX ``pads`` (``dims`` begins, then ``dims`` ends) as ``F.pad``'s ``(last_begin, last_end, ...)``."""
    begin, end = pads[:dims], pads[dims:]
    out = []
    for axis in reversed(range(dims)):
        out += [begin[axis], end[axis]]
    return out


def _check_auto_pad(node, attrs):
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise _unsupported(node, f"auto_pad={attrs['auto_pad']!r}")


def conv(node, attrs, x, w, b=None):
    import torch.nn.functional as F

    _check_auto_pad(node, attrs)
    dims = w.dim() - 2
    if dims not in (1, 2, 3):
        raise _unsupported(node, f"a {dims}-d convolution")
    pads = list(attrs.get("pads", [0] * (2 * dims)))
    symmetric = _same_pads(pads, dims)
    if symmetric is None:
        x, symmetric = F.pad(x, _torch_pad_arg(pads, dims)), [0] * dims
    func = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    return func(x, w, b, stride=list(attrs.get("strides", [1] * dims)), padding=symmetric,
                dilation=list(attrs.get("dilations", [1] * dims)), groups=int(attrs.get("group", 1)))


def _pool(node, attrs, x, kind: str):
    import torch.nn.functional as F

    _check_auto_pad(node, attrs)
    kernel = list(attrs["kernel_shape"])
    dims = len(kernel)
    if dims not in (1, 2, 3):
        raise _unsupported(node, f"a {dims}-d pool")
    strides = list(attrs.get("strides", [1] * dims))
    pads = list(attrs.get("pads", [0] * (2 * dims)))
    ceil = bool(attrs.get("ceil_mode", 0))
    symmetric = _same_pads(pads, dims)
    if kind == "max":
        if symmetric is None:
            x, symmetric = F.pad(x, _torch_pad_arg(pads, dims), value=-math.inf), [0] * dims
        func = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[dims - 1]
        return func(x, kernel, strides, symmetric, dilation=list(attrs.get("dilations", [1] * dims)), ceil_mode=ceil)
    if symmetric is None:
        raise _unsupported(node, "an average pool with asymmetric pads")
    if any(d != 1 for d in attrs.get("dilations", [])):
        raise _unsupported(node, "a dilated average pool")
    func = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[dims - 1]
    return func(x, kernel, strides, symmetric, ceil_mode=ceil, count_include_pad=bool(attrs.get("count_include_pad", 0)))


def gemm(node, attrs, a, b, c=None):
    a = a.t() if attrs.get("transA", 0) else a
    b = b.t() if attrs.get("transB", 0) else b
    out = attrs.get("alpha", 1.0) * (a @ b)
    if c is not None:
        out = out + attrs.get("beta", 1.0) * c
    return out


def batch_norm(node, attrs, x, scale, bias, mean, var):
    import torch.nn.functional as F

    if attrs.get("training_mode", 0):
        raise _unsupported(node, "training_mode=1")
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=attrs.get("epsilon", 1e-5))


def _axes(node, attrs, axes_input):
    """Axes from the input (newer opsets) or the attribute (older ones); None: all."""
    if axes_input is not None:
        return [int(a) for a in axes_input.tolist()]
    return list(attrs["axes"]) if "axes" in attrs else None


def _reduce(func):
    def run(node, attrs, x, axes=None):
        keep = bool(attrs.get("keepdims", 1))
        dims = _axes(node, attrs, axes)
        if not dims:
            if attrs.get("noop_with_empty_axes", 0):
                return x
            dims = list(range(x.dim()))
        return func(x, dims, keep)

    return run


def _reduce_max(x, dims, keep):
    for d in sorted((d % x.dim() for d in dims), reverse=True):
        x = x.amax(d, keepdim=keep)
    return x


def _reduce_min(x, dims, keep):
    for d in sorted((d % x.dim() for d in dims), reverse=True):
        x = x.amin(d, keepdim=keep)
    return x


def reshape(node, attrs, x, shape):
    target = [int(s) for s in shape.tolist()]
    if not attrs.get("allowzero", 0):
        target = [x.shape[i] if s == 0 else s for i, s in enumerate(target)]
    return x.reshape(target)


def flatten(node, attrs, x):
    axis = int(attrs.get("axis", 1)) % max(x.dim(), 1)
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)


def squeeze(node, attrs, x, axes=None):
    dims = _axes(node, attrs, axes)
    if dims is None:
        return x.squeeze()
    for d in sorted((d % x.dim() for d in dims), reverse=True):
        x = x.squeeze(d)
    return x


def unsqueeze(node, attrs, x, axes=None):
    dims = _axes(node, attrs, axes)
    rank = x.dim() + len(dims)
    for d in sorted(d % rank for d in dims):
        x = x.unsqueeze(d)
    return x


def clip(node, attrs, x, low=None, high=None):
    import torch

    low = low if low is not None else attrs.get("min")
    high = high if high is not None else attrs.get("max")
    if low is not None:
        x = torch.maximum(x, torch.as_tensor(low, dtype=x.dtype, device=x.device))
    if high is not None:
        x = torch.minimum(x, torch.as_tensor(high, dtype=x.dtype, device=x.device))
    return x


def pad(node, attrs, x, pads=None, value=None, axes=None):
    import torch.nn.functional as F

    if axes is not None:
        raise _unsupported(node, "Pad with axes")
    pads = [int(p) for p in (pads.tolist() if pads is not None else attrs["pads"])]
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    arg = _torch_pad_arg(pads, x.dim())
    while len(arg) > 2 and arg[-2:] == [0, 0]:  # leading axes left unpadded: F.pad needs fewer pairs
        arg = arg[:-2]
    if mode == "constant":
        value = None if value is None else np.asarray(value)  # a host input: numpy, not a tensor
        fill = float(value.reshape(-1)[0]) if value is not None and value.size else float(attrs.get("value", 0.0))
        return F.pad(x, arg, value=fill)
    torch_mode = {"reflect": "reflect", "edge": "replicate"}.get(mode)
    if torch_mode is None:
        raise _unsupported(node, f"Pad mode {mode!r}")
    return F.pad(x, arg, mode=torch_mode)


def cast(node, attrs, x):
    import torch

    dtypes = {onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64,
              onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.INT32: torch.int32,
              onnx.TensorProto.BOOL: torch.bool, onnx.TensorProto.FLOAT16: torch.float16,
              onnx.TensorProto.INT8: torch.int8, onnx.TensorProto.UINT8: torch.uint8}
    if attrs["to"] not in dtypes:
        raise _unsupported(node, f"Cast to {onnx.TensorProto.DataType.Name(attrs['to'])}")
    return x.to(dtypes[attrs["to"]])


def slice_(node, attrs, x, starts, ends, axes=None, steps=None):
    starts, ends = starts.tolist(), ends.tolist()
    axes = axes.tolist() if axes is not None else list(range(len(starts)))
    steps = steps.tolist() if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step <= 0:
            raise _unsupported(node, "Slice with a non-positive step")
        size = x.shape[axis]
        start = max(0, min(size, start + size if start < 0 else start))
        end = max(0, min(size, end + size if end < 0 else end))
        index[axis] = slice(start, end, step)
    return x[tuple(index)]


def shape(node, attrs, x):
    import torch

    dims = list(x.shape)[slice(attrs.get("start", 0), attrs.get("end"))]
    return torch.tensor(dims, dtype=torch.int64, device=x.device)


def constant_of_shape(node, attrs, dims):
    import torch

    value = numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.zeros(1, np.float32)
    fill = torch.from_numpy(value.reshape(-1)[:1].copy())
    return torch.full([int(d) for d in dims.tolist()], fill.item(), dtype=fill.dtype)


def expand(node, attrs, x, dims):
    import torch

    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(int(d) for d in dims.tolist())))


def gather(node, attrs, x, indices):
    axis = int(attrs.get("axis", 0)) % x.dim()
    indices = indices.long()
    flat = indices.reshape(-1) % x.shape[axis]  # negative indices count from the end
    picked = x.index_select(axis, flat)
    return picked.reshape(tuple(x.shape[:axis]) + tuple(indices.shape) + tuple(x.shape[axis + 1:]))


def tile(node, attrs, x, repeats):
    return x.repeat(*(int(r) for r in repeats.tolist()))


def split(node, attrs, x, sizes=None):
    """``Split`` into ``len(node.output)`` pieces: the sizes from the input (opset 13+), the
    attribute (older), or equal parts, the last one smaller when the axis does not divide."""
    axis = int(attrs.get("axis", 0)) % x.dim()
    parts = len(node.output)
    if sizes is not None:
        sizes = [int(s) for s in sizes.tolist()]
    elif "split" in attrs:
        sizes = [int(s) for s in attrs["split"]]
    else:
        step = -(-x.shape[axis] // int(attrs.get("num_outputs", parts)))
        sizes = [min(step, x.shape[axis] - start) for start in range(0, x.shape[axis], step)]
    if len(sizes) != parts or sum(sizes) != x.shape[axis]:
        raise _unsupported(node, f"Split sizes {sizes} of an axis of {x.shape[axis]} into {parts} outputs")
    return tuple(x.split(sizes, axis))


def layer_norm(node, attrs, x, scale, bias=None):
    import torch.nn.functional as F

    if attrs.get("stash_type", 1) != 1:
        raise _unsupported(node, "LayerNormalization with a stash_type other than float")
    axis = int(attrs.get("axis", -1)) % x.dim()
    shape = tuple(x.shape[axis:])
    return F.layer_norm(x, shape, scale.expand(shape), None if bias is None else bias.expand(shape), eps=attrs.get("epsilon", 1e-5))


def instance_norm(node, attrs, x, scale, bias):
    import torch.nn.functional as F

    return F.instance_norm(x, weight=scale, bias=bias, eps=attrs.get("epsilon", 1e-5))


def gelu(node, attrs, x):
    import torch.nn.functional as F

    approximate = attrs.get("approximate", b"none")
    return F.gelu(x, approximate=approximate.decode() if isinstance(approximate, bytes) else approximate)


def arg_max(node, attrs, x):
    axis = int(attrs.get("axis", 0)) % x.dim()
    if attrs.get("select_last_index", 0):
        flipped = x.flip(axis).argmax(axis, keepdim=bool(attrs.get("keepdims", 1)))
        return x.shape[axis] - 1 - flipped
    return x.argmax(axis, keepdim=bool(attrs.get("keepdims", 1)))


def cast_like(node, attrs, x, like):
    return x.to(like.dtype)


def range_(node, attrs, start, limit, delta):
    import torch

    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device)


RESIZE_COORDINATES = {
    # output index i -> input coordinate, float32 as ONNX Runtime computes it (scale: out / in)
    "half_pixel": lambda i, scale, size_in, size_out: (i + 0.5) / scale - 0.5,
    "pytorch_half_pixel": lambda i, scale, size_in, size_out: (i + 0.5) / scale - 0.5 if size_out > 1 else 0 * i,
    "align_corners": lambda i, scale, size_in, size_out: (
        i * np.float32(size_in - 1) / np.float32(size_out - 1) if size_out > 1 else 0 * i),
    "asymmetric": lambda i, scale, size_in, size_out: i / scale,
}
RESIZE_ROUNDING = {
    "round_prefer_floor": lambda x: np.ceil(x - 0.5),
    "round_prefer_ceil": lambda x: np.floor(x + 0.5),
    "floor": np.floor,
    "ceil": np.ceil,
}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def resize(node, attrs, x, roi=None, scales=None, sizes=None):
    """``Resize`` (and ``Upsample``: ``x, scales``) in modes ``nearest`` and ``linear``, axis by
    axis: input coordinates as the ONNX definition gives them, then a gather (nearest) or a
    two-tap blend (linear)."""
    mode = _text(attrs.get("mode", "nearest"))
    coordinates = _text(attrs.get("coordinate_transformation_mode", "half_pixel" if node.op_type == "Resize" else "asymmetric"))
    rounding = _text(attrs.get("nearest_mode", "round_prefer_floor"))
    policy = _text(attrs.get("keep_aspect_ratio_policy", "stretch"))
    for what, value, known in (("mode", mode, ("nearest", "linear")), ("coordinate_transformation_mode", coordinates,
                               RESIZE_COORDINATES), ("nearest_mode", rounding, RESIZE_ROUNDING),
                               ("keep_aspect_ratio_policy", policy, ("stretch",))):
        if value not in known:
            raise _unsupported(node, f"{what}={value!r}")
    if int(attrs.get("antialias", 0)) and mode != "nearest":
        raise _unsupported(node, "antialias=1")
    rank = x.dim()
    axes = [a % rank for a in attrs.get("axes", range(rank))]
    if sizes is not None and len(sizes):
        out_sizes = [int(v) for v in sizes]
        factors = [np.float32(o) / np.float32(x.shape[a]) for o, a in zip(out_sizes, axes)]
    elif scales is not None and len(scales):
        factors = [np.float32(v) for v in scales]
        out_sizes = [int(np.floor(np.float32(x.shape[a]) * f)) for f, a in zip(factors, axes)]
    else:
        raise _unsupported(node, "a Resize with neither scales nor sizes")
    for axis, size_out, factor in zip(axes, out_sizes, factors):
        size_in = x.shape[axis]
        if size_out == size_in and factor == 1:
            continue
        taps = _resize_taps(mode, coordinates, rounding, size_in, size_out, factor, x.device)
        if mode == "nearest":
            x = x.index_select(axis, taps[0])
        else:
            low, high, weight = taps
            weight = weight.reshape([-1] + [1] * (x.dim() - axis - 1))
            x = x.index_select(axis, low) * (1 - weight) + x.index_select(axis, high) * weight
    return x


@functools.lru_cache(maxsize=None)
def _resize_taps(mode, coordinates, rounding, size_in, size_out, factor, device):
    """One axis of a resize, computed once per shape and device rather than on every run: the
    source index of each output (nearest), or its two source indices and the second's weight
    (linear, coordinates clamped to the input as ONNX Runtime does)."""
    import torch

    where = RESIZE_COORDINATES[coordinates](np.arange(size_out, dtype=np.float32), factor, size_in, size_out)
    where = np.asarray(where, np.float32)
    if mode == "nearest":
        index = np.clip(RESIZE_ROUNDING[rounding](where), 0, size_in - 1).astype(np.int64)
        return (torch.from_numpy(index).to(device),)
    where = np.clip(where, 0, size_in - 1)
    low = np.floor(where).astype(np.int64)
    high = np.minimum(low + 1, size_in - 1)
    weight = (where - low).astype(np.float32)
    return tuple(torch.from_numpy(v).to(device) for v in (low, high, weight))


def _elementwise(name):
    def run(node, attrs, *args):
        import torch

        return getattr(torch, name)(*args)

    return run


def _activation(name, **fixed):
    def run(node, attrs, x):
        import torch.nn.functional as F

        options = {key: attrs.get(onnx_name, default) for key, (onnx_name, default) in fixed.items()}
        return getattr(F, name)(x, **options)

    return run


OPSET = "onnx_opset"  # added to the attributes of the ops whose meaning changed with the opset


def _softmax(log: bool):
    def run(node, attrs, x):
        import torch

        func = torch.log_softmax if log else torch.softmax
        if attrs[OPSET] >= 13:
            return func(x, int(attrs.get("axis", -1)))
        # before opset 13: over all axes from ``axis`` (default 1) on, flattened into one
        axis = int(attrs.get("axis", 1)) % x.dim()
        return func(x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1), 1).reshape(x.shape)

    return run


def prelu(node, attrs, x, slope):
    import torch

    return torch.where(x >= 0, x, x * slope)


def concat(node, attrs, *xs):
    import torch

    return torch.cat(xs, int(attrs["axis"]))


def selu(node, attrs, x):
    import torch

    alpha, gamma = attrs.get("alpha", 1.67326319217681884765625), attrs.get("gamma", 1.05070102214813232421875)
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


def hard_sigmoid(node, attrs, x):
    return (attrs.get("alpha", 0.2) * x + attrs.get("beta", 0.5)).clamp(0, 1)


def _variadic(name):
    def run(node, attrs, *args):
        import torch

        out = args[0]
        for arg in args[1:]:
            out = getattr(torch, name)(out, arg)
        return out

    return run


# op type -> (node, attrs, *inputs) -> output tensor (one output per node)
OPS = {
    "Conv": conv,
    "MaxPool": lambda node, attrs, x: _pool(node, attrs, x, "max"),
    "AveragePool": lambda node, attrs, x: _pool(node, attrs, x, "avg"),
    "GlobalAveragePool": lambda node, attrs, x: x.mean(tuple(range(2, x.dim())), keepdim=True),
    "GlobalMaxPool": lambda node, attrs, x: _reduce_max(x, list(range(2, x.dim())), True),
    "Gemm": gemm,
    "MatMul": _elementwise("matmul"),
    "BatchNormalization": batch_norm,
    "Add": _elementwise("add"),
    "Sub": _elementwise("sub"),
    "Mul": _elementwise("mul"),
    "Div": _elementwise("div"),
    "Pow": _elementwise("pow"),
    "Max": _variadic("maximum"),
    "Min": _variadic("minimum"),
    "Sum": _variadic("add"),
    "Where": _elementwise("where"),
    "GreaterOrEqual": _elementwise("ge"),
    "Greater": _elementwise("gt"),
    "LessOrEqual": _elementwise("le"),
    "Less": _elementwise("lt"),
    "Equal": _elementwise("eq"),
    "And": _elementwise("logical_and"),
    "Or": _elementwise("logical_or"),
    "Xor": _elementwise("logical_xor"),
    "Not": _elementwise("logical_not"),
    "Sign": _elementwise("sign"),
    "Abs": _elementwise("abs"),
    "Neg": _elementwise("neg"),
    "Sqrt": _elementwise("sqrt"),
    "Exp": _elementwise("exp"),
    "Log": _elementwise("log"),
    "Floor": _elementwise("floor"),
    "Ceil": _elementwise("ceil"),
    "Round": _elementwise("round"),  # half to even, as ONNX
    "Reciprocal": _elementwise("reciprocal"),
    "Relu": _activation("relu"),
    "Sigmoid": _elementwise("sigmoid"),
    "Tanh": _elementwise("tanh"),
    "LeakyRelu": _activation("leaky_relu", negative_slope=("alpha", 0.01)),
    "Elu": _activation("elu", alpha=("alpha", 1.0)),
    "HardSigmoid": hard_sigmoid,
    "HardSwish": _activation("hardswish"),
    "Softplus": _activation("softplus"),
    "PRelu": prelu,
    "Clip": clip,
    "Softmax": _softmax(log=False),
    "LogSoftmax": _softmax(log=True),
    "ReduceMean": _reduce(lambda x, dims, keep: x.mean(dims, keepdim=keep)),
    "ReduceSum": _reduce(lambda x, dims, keep: x.sum(dims, keepdim=keep)),
    "ReduceMax": _reduce(_reduce_max),
    "Reshape": reshape,
    "Flatten": flatten,
    "Squeeze": squeeze,
    "Unsqueeze": unsqueeze,
    "Transpose": lambda node, attrs, x: x.permute(*(attrs.get("perm") or reversed(range(x.dim())))),
    "Concat": concat,
    "Identity": lambda node, attrs, x: x,
    "Dropout": lambda node, attrs, x, *rest: x,  # inference: the identity
    "Cast": cast,
    "Pad": pad,
    "Slice": slice_,
    "Shape": shape,
    "ConstantOfShape": constant_of_shape,
    "Expand": expand,
    "Gather": gather,
    "Tile": tile,
    "Split": split,
    "LayerNormalization": layer_norm,
    "InstanceNormalization": instance_norm,
    "Erf": _elementwise("erf"),
    "Gelu": gelu,
    "Mish": _activation("mish"),
    "Selu": selu,
    "Softsign": _activation("softsign"),
    "ReduceMin": _reduce(_reduce_min),
    "ArgMax": arg_max,
    "CastLike": cast_like,
    "Range": range_,
    "Resize": resize,
    "Upsample": lambda node, attrs, x, scales: resize(node, attrs, x, scales=scales),
}

# ops whose every output the runner computes (the others: only the first one may be used)
MULTI_OUTPUT = {"Split"}

# inputs read as Python values (shapes, axes, pads), not as tensors on the device
HOST_INPUTS = {"Reshape": (1,), "Squeeze": (1,), "Unsqueeze": (1,), "Pad": (1, 2, 3), "Slice": (1, 2, 3, 4),
               "ReduceMean": (1,), "ReduceSum": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ConstantOfShape": (0,), "Expand": (1,),
               "Tile": (1,), "Split": (1,), "Resize": (1, 2, 3), "Upsample": (1,)}


def check_runnable(graph) -> None:
    """Fail at construction, naming the first node the runner cannot evaluate."""
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in OPS:
            raise _unsupported(node, "this op")
        if len(node.output) > 1 and any(node.output[1:]) and node.op_type not in MULTI_OUTPUT | {"Dropout"}:
            raise _unsupported(node, "more than one output")


def torch_module(model: onnx.ModelProto):
    """``model`` (an ONNX model with static shapes) as a ``torch.nn.Module``."""
    return _module_class()(model)


def _module_class():
    """The module class, defined when first needed: torch is imported only by its users."""
    import torch

    class OnnxGraph(torch.nn.Module):
        def __init__(self, model: onnx.ModelProto):
            super().__init__()
            graph = model.graph
            check_runnable(graph)
            self.graph = graph
            self.names = {}  # ONNX tensor name -> buffer attribute
            self.host = {}  # ONNX tensor name -> numpy value (shapes, axes...)
            for index, init in enumerate(graph.initializer):
                array = numpy_helper.to_array(init)
                self.host[init.name] = array
                attr = f"onnx_initializer_{index}"
                self.register_buffer(attr, torch.from_numpy(np.array(array)), persistent=False)
                self.names[init.name] = attr
            initialized = {i.name for i in graph.initializer}
            self.input_names = [i.name for i in graph.input if i.name not in initialized]
            self.output_names = [o.name for o in graph.output]
            opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
            self.plan = [(node, OPS[node.op_type], {**attributes(node), OPSET: opset}, HOST_INPUTS.get(node.op_type, ()))
                         for node in graph.node]

        def forward(self, *inputs):
            values = {name: getattr(self, attr) for name, attr in self.names.items()}
            values.update(zip(self.input_names, inputs))
            for node, run, attrs, host in self.plan:
                args = []
                for position, name in enumerate(node.input):
                    if not name:
                        args.append(None)
                    elif position in host:
                        args.append(self.host_value(node, name, values))
                    else:
                        args.append(values[name])
                while args and args[-1] is None:
                    args.pop()
                result = run(node, attrs, *args)
                values.update(zip(node.output, result) if node.op_type in MULTI_OUTPUT else [(node.output[0], result)])
            outputs = [values[name] for name in self.output_names]
            return outputs[0] if len(outputs) == 1 else tuple(outputs)

        def host_value(self, node, name, values):
            if name in self.host:
                return self.host[name]
            value = values[name]
            if isinstance(value, torch.Tensor) and value.dtype in (torch.int64, torch.int32):
                return value.cpu().numpy()
            raise _unsupported(node, f"a computed (non-constant) input {name!r}")

    return OnnxGraph


def module_from_onnx(path: str, batch: int | None = None):
    """The ONNX model at ``path`` as a ``torch.nn.Module`` in eval mode, read as the compiler reads
    it (``compiler.read_pinned``: input shape pinned to ``batch``, shape arithmetic folded)."""
    model, _, _ = read_pinned(path, batch)
    try:
        return torch_module(model).eval()
    except BnnError as err:
        raise BnnError(f"{path}: {err}") from None
