"""The ONNX graph run in PyTorch (``bench``'s ``torch_fp32`` engine for a bare ONNX file)
against ONNX Runtime with optimisations off, op forms included that differ between the two
libraries' conventions (asymmetric pads, ceil-mode pools, ``Reshape`` with 0, Gemm transposes)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from bnn_tvm.errors import BnnError
from bnn_tvm.measure.onnx_torch import module_from_onnx, torch_module
from bnn_tvm.compilation.reference import reference_outputs


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def many_ops_model():
    rng = np.random.default_rng(3)
    inits = [
        const("w", rng.standard_normal((6, 3, 3, 3)).astype(np.float32)),
        const("b", rng.standard_normal(6).astype(np.float32)),
        const("zero", np.float32(0)), const("one", np.float32(1)), const("minus_one", np.float32(-1)),
        const("bn_scale", rng.uniform(0.5, 1.5, 6).astype(np.float32)), const("bn_bias", rng.standard_normal(6).astype(np.float32)),
        const("bn_mean", rng.standard_normal(6).astype(np.float32)), const("bn_var", rng.uniform(0.5, 2, 6).astype(np.float32)),
        const("slope", rng.uniform(0, 0.3, (6, 1, 1)).astype(np.float32)),
        const("lo", np.float32(-0.5)), const("hi", np.float32(0.75)),
        const("shape", np.array([0, 6, -1], np.int64)), const("axes_last", np.array([2], np.int64)),
        const("fc", rng.standard_normal((4, 12)).astype(np.float32)), const("fc_b", rng.standard_normal(4).astype(np.float32)),
        const("pads", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)),
        const("starts", np.array([1], np.int64)), const("ends", np.array([-1], np.int64)), const("slice_axes", np.array([3], np.int64)),
        const("pick", np.array([2, 0, -1], np.int64)),
    ]
    nodes = [
        helper.make_node("GreaterOrEqual", ["x", "zero"], ["ge"]),
        helper.make_node("Where", ["ge", "one", "minus_one"], ["xb"]),
        helper.make_node("Conv", ["xb", "w", "b"], ["c"], pads=[0, 1, 2, 1], strides=[2, 1]),  # asymmetric
        helper.make_node("BatchNormalization", ["c", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn"], epsilon=1e-3),
        helper.make_node("PRelu", ["bn", "slope"], ["pr"]),
        helper.make_node("Clip", ["pr", "lo", "hi"], ["cl"]),
        helper.make_node("Pad", ["cl", "pads"], ["pd"], mode="reflect"),
        helper.make_node("Slice", ["pd", "starts", "ends", "slice_axes"], ["sl"]),
        helper.make_node("MaxPool", ["sl"], ["mp"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 0, 1], ceil_mode=1),
        helper.make_node("AveragePool", ["mp"], ["ap"], kernel_shape=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
        helper.make_node("Concat", ["ap", "ap"], ["cat"], axis=1),
        helper.make_node("Gather", ["cat", "pick"], ["ga"], axis=1),
        helper.make_node("Transpose", ["ga"], ["tr"], perm=[0, 1, 3, 2]),
        helper.make_node("Reshape", ["tr", "shape"], ["rs"]),  # 0 copies the batch
        helper.make_node("ReduceMean", ["rs", "axes_last"], ["rm"], keepdims=0),
        helper.make_node("Unsqueeze", ["rm", "axes_last"], ["us"]),
        helper.make_node("Squeeze", ["us", "axes_last"], ["sq"]),
        helper.make_node("Flatten", ["sq"], ["fl"], axis=1),
        helper.make_node("Concat", ["fl", "fl"], ["fl2"], axis=1),
        helper.make_node("Gemm", ["fl2", "fc", "fc_b"], ["logits"], transB=1, alpha=0.5, beta=2.0),
    ]
    graph = helper.make_graph(nodes, "many_ops", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 9, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 4])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_ops_match_onnx_runtime(memory_format):
    model = many_ops_model()
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 8)).astype(np.float32)
    x[0, 0, :2] = 0.0  # exact zeros: the binarizer's tie goes to +1 in both
    (expected,) = reference_outputs(model, x, "x")
    module = torch_module(model).eval().to(memory_format=memory_format)
    with torch.inference_mode():
        got = module(torch.from_numpy(x).contiguous(memory_format=memory_format)).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_unsupported_op_names_the_node(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("LRN", ["x"], ["y"], name="local_norm", size=3)], "lrn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 5])],
    )
    path = tmp_path / "lrn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    with pytest.raises(BnnError, match=r"lrn\.onnx.*'local_norm' \(LRN\)"):
        module_from_onnx(str(path))


def test_dynamic_batch_model_pinned_and_folded(tmp_path):
    """A PyTorch export with a dynamic batch and ``ones_like`` binarizers
    (``ConstantOfShape(Shape(x))``) runs at the batch asked for."""
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 3, padding=1)

        def forward(self, x):
            x = torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))
            return torch.flatten(self.conv(x), 1)

    path = tmp_path / "net.onnx"
    torch.onnx.export(Net().eval(), torch.randn(1, 2, 5, 5), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}}, opset_version=17, dynamo=False)
    module = module_from_onnx(str(path), 3)
    x = np.random.default_rng(1).standard_normal((3, 2, 5, 5)).astype(np.float32)
    (expected,) = reference_outputs(onnx.load(str(path)), x, "x")
    with torch.inference_mode():
        got = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opset", [11, 18])
def test_softmax_follows_the_models_opset(opset):
    """Before opset 13, Softmax normalises over all axes from ``axis`` (default 1) on; since, over
    ``axis`` alone (default -1)."""
    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["y"])], "softmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4, 5])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 5)).astype(np.float32)
    (expected,) = reference_outputs(model, x, "x")
    with torch.inference_mode():
        got = torch_module(model)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def transformer_and_split_ops_model(opset: int):
    """The ops of the dynamo exporter's graphs beyond a CNN: ``Tile`` (``Tensor.repeat``), a
    three-way ``Split``, layer and instance norms, GELU (opset 20; ``Erf`` before), Mish, SELU,
    Softsign, ``ReduceMin``, ``ArgMax`` with ties, ``CastLike`` and ``Range``."""
    rng = np.random.default_rng(5)
    inits = [
        const("reps", np.array([1, 2, 1, 1], np.int64)), const("sizes", np.array([2, 3, 3], np.int64)),
        const("ln_scale", rng.uniform(0.5, 1.5, 4).astype(np.float32)), const("ln_bias", rng.standard_normal(4).astype(np.float32)),
        const("in_scale", rng.uniform(0.5, 1.5, 2).astype(np.float32)), const("in_bias", rng.standard_normal(2).astype(np.float32)),
        const("axes_min", np.array([1], np.int64)), const("half", np.float32(0.5)),
        const("r0", np.float32(0.0)), const("r1", np.float32(4.0)), const("rd", np.float32(1.0)),
    ]
    gelu = (helper.make_node("Gelu", ["b"], ["g"], approximate="tanh") if opset >= 20
            else helper.make_node("Erf", ["b"], ["g"]))
    nodes = [
        helper.make_node("Tile", ["x", "reps"], ["t"]),  # (2, 8, 3, 4)
        helper.make_node("Split", ["t", "sizes"], ["a", "b", "c"], axis=1),
        helper.make_node("LayerNormalization", ["a", "ln_scale", "ln_bias"], ["ln"], axis=-1, epsilon=1e-3),
        helper.make_node("InstanceNormalization", ["ln", "in_scale", "in_bias"], ["inorm"]),
        gelu,
        helper.make_node("Mish", ["g"], ["mi"]),
        helper.make_node("Selu", ["c"], ["se"], alpha=1.5),
        helper.make_node("Softsign", ["se"], ["ss"]),
        helper.make_node("Add", ["mi", "ss"], ["sum"]),
        helper.make_node("ReduceMin", ["sum", "axes_min"], ["rmin"], keepdims=1),
        helper.make_node("Round", ["sum"], ["rounded"]),  # ties for ArgMax
        helper.make_node("ArgMax", ["rounded"], ["am"], axis=1, keepdims=0, select_last_index=1),
        helper.make_node("CastLike", ["am", "half"], ["amf"]),
        helper.make_node("Range", ["r0", "r1", "rd"], ["ramp"]),
        helper.make_node("Mul", ["amf", "ramp"], ["ramped"]),
        helper.make_node("Concat", ["rmin", "inorm"], ["y1"], axis=1),
    ]
    graph = helper.make_graph(nodes, "more_ops", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 3, 4])],
                              [helper.make_tensor_value_info("y1", TensorProto.FLOAT, [2, 3, 3, 4]),
                               helper.make_tensor_value_info("ramped", TensorProto.FLOAT, [2, 3, 4])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("opset", [18, 20])
def test_more_ops_match_onnx_runtime(opset):
    model = transformer_and_split_ops_model(opset)
    x = (np.random.default_rng(6).standard_normal((2, 4, 3, 4)) * 2).astype(np.float32)
    expected = reference_outputs(model, x, "x")
    with torch.inference_mode():
        got = torch_module(model).eval()(torch.from_numpy(x))
    for name, want, have in zip(("y1", "ramped"), expected, got):
        assert have.shape == want.shape, name
        np.testing.assert_allclose(have.numpy(), want, rtol=1e-5, atol=1e-5, err_msg=name)


RESIZES = [  # (attributes, scales, sizes, axes): the forms exporters write, up and down
    (dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"), [1, 1, 2, 2], None, None),
    (dict(mode="nearest"), None, [2, 4, 7, 5], None),  # half_pixel, round_prefer_floor
    (dict(mode="nearest", nearest_mode="round_prefer_ceil", coordinate_transformation_mode="align_corners"),
     None, [4, 9], [2, 3]),
    (dict(mode="nearest", coordinate_transformation_mode="align_corners"), None, [2, 4, 11, 5], None),  # ties
    (dict(mode="linear"), [1, 1, 1.5, 2], None, None),  # half_pixel
    (dict(mode="linear", coordinate_transformation_mode="align_corners"), None, [2, 4, 8, 3], None),
    (dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel"), [1, 1, 0.5, 0.75], None, None),
]


def resize_model():
    inits, nodes = [], []
    for k, (attrs, scales, sizes, axes) in enumerate(RESIZES):
        inputs = ["x", ""]
        if scales is not None:
            inits.append(const(f"scales{k}", np.array(scales, np.float32)))
            inputs.append(f"scales{k}")
        else:
            inits.append(const(f"sizes{k}", np.array(sizes, np.int64)))
            inputs += ["", f"sizes{k}"]
        nodes.append(helper.make_node("Resize", inputs, [f"y{k}"], **attrs, **({"axes": axes} if axes else {})))
    graph = helper.make_graph(nodes, "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 6, 5])],
                              [helper.make_empty_tensor_value_info(f"y{k}") for k in range(len(RESIZES))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def test_resize_matches_onnx_runtime():
    """Nearest (every rounding the exporters use) and linear resizes, by scales and by sizes,
    up and down, as ONNX Runtime computes them."""
    model = resize_model()
    x = np.random.default_rng(7).standard_normal((2, 4, 6, 5)).astype(np.float32)
    expected = reference_outputs(model, x, "x")
    with torch.inference_mode():
        got = torch_module(model).eval()(torch.from_numpy(x))
    for k, (want, have) in enumerate(zip(expected, got)):
        assert have.shape == want.shape, RESIZES[k]
        np.testing.assert_allclose(have.numpy(), want, rtol=1e-6, atol=1e-6, err_msg=str(RESIZES[k]))


def test_resize_forms_it_cannot_run_are_named():
    graph = helper.make_graph([helper.make_node("Resize", ["x", "", "s"], ["y"], name="up_cubic", mode="cubic")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_empty_tensor_value_info("y")], [const("s", np.array([1, 1, 2, 2], np.float32))])
    module = torch_module(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    with pytest.raises(BnnError, match="'up_cubic' \\(Resize\\): mode='cubic'"):
        module(torch.zeros(1, 1, 2, 2))


def test_constant_pad_with_a_value_input_matches_onnx_runtime():
    """``F.pad(x, ..., "constant", v)`` exports ``Pad(x, pads, value)``; the value is an input read
    on the host (IR-Net's option-A shortcut pads channels with zeros this way)."""
    inits = [const("pads", np.array([0, 2, 0, 0, 0, 1, 0, 0], np.int64)), const("value", np.float32(0.5))]
    nodes = [helper.make_node("Pad", ["x", "pads", "value"], ["y"], mode="constant")]
    graph = helper.make_graph(nodes, "pad_value", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6, 4, 4])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    x = np.random.default_rng(8).standard_normal((2, 3, 4, 4)).astype(np.float32)
    with torch.inference_mode():
        got = torch_module(model).eval()(torch.from_numpy(x))
    np.testing.assert_array_equal(got.numpy(), reference_outputs(model, x, "x")[0])
