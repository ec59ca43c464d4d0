"""``inspect``: per ONNX node, the binary kernel or the reason it stayed float."""

from __future__ import annotations

import onnx

from bnn_tvm.training import models
from bnn_tvm.cli import main
from bnn_tvm.frontend.export import export_onnx
from bnn_tvm.compilation.inspection import inspect_onnx


def test_default_model_report(capsys):
    assert main(["inspect"]) == 0
    out = capsys.readouterr().out
    assert "binary_conv2d_threshold" in out and "binary_dense" in out
    assert "nodes run in binary kernels" in out


def test_bireal_resnet18_every_3x3_binary_conv_fused(tmp_path):
    """Bi-Real ResNet-18 (random weights): all 16 binary 3x3 convs fuse; the float stem, the
    1x1 downsampling shortcuts and the classifier are named as float."""
    path = str(tmp_path / "bireal.onnx")
    export_onnx(models.build("birealnet18"), models.input_shape("birealnet18"), path)
    reports = inspect_onnx(path)
    kernel_shape = {
        n.name: tuple(onnx.helper.get_attribute_value(a)) for n in onnx.load(path).graph.node for a in n.attribute
        if n.op_type == "Conv" and a.name == "kernel_shape"
    }
    convs = [r for r in reports if r.op_type == "Conv"]
    binary = [r for r in convs if r.binary]
    assert len(binary) == 16
    assert all(kernel_shape[r.name] == (3, 3) and r.kernel.startswith("binary_conv2d") for r in binary)
    float_convs = [r for r in convs if not r.binary]
    assert len(float_convs) == 4  # the stem and three 1x1 downsampling convs
    assert all("no binarized operand" in r.note for r in float_convs)
    assert any(r.op_type == "Gemm" and not r.binary for r in reports)


def test_batch_norm_before_a_float_op_is_not_credited_to_it(tmp_path):
    """A batch norm's Relax tuple binding belongs to the batch norm: the binary conv's epilogue
    fusion names the batch norm, and the ReduceMean after it stays a float node."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in (
        ("zero", 0), ("one", 1), ("minus_one", -1),
        ("w", np.where(rng.standard_normal((32, 32, 3, 3)) >= 0, 1, -1)),
        ("scale", rng.uniform(0.5, 1.5, 32)), ("bias", rng.standard_normal(32)),
        ("mean", rng.standard_normal(32)), ("var", rng.uniform(0.5, 2, 32)),
        ("fc", rng.standard_normal((32, 10))),
    )]
    nodes = [
        helper.make_node("GreaterOrEqual", ["x", "zero"], ["ge"], name="sign_compare"),
        helper.make_node("Where", ["ge", "one", "minus_one"], ["xb"], name="sign"),
        helper.make_node("Conv", ["xb", "w"], ["c"], name="binary_conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["bn"], name="bn"),
        helper.make_node("ReduceMean", ["bn"], ["pooled"], name="global_mean", axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["pooled", "fc"], ["y"], name="classifier"),
    ]
    graph = helper.make_graph(nodes, "bn_then_mean", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], initializer=inits)
    path = tmp_path / "bn_then_mean.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    reports = {r.name: r for r in inspect_onnx(str(path))}
    assert reports["bn"].binary and reports["binary_conv"].binary
    assert not reports["global_mean"].binary, reports["global_mean"]
