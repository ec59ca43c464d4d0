"""``inspect``: per ONNX node, the binary kernel or the reason it stayed float."""

from __future__ import annotations

import onnx

from bnn_tvm import models
from bnn_tvm.cli import main
from bnn_tvm.export import export_onnx
from bnn_tvm.inspect import inspect_onnx


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
