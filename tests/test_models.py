"""Model zoo: shapes, float twins, quantizer options, the ONNX export contract, and compile+verify."""

import re

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from bnn_tvm.training import models
from bnn_tvm.errors import BnnError
from bnn_tvm.frontend.export import default_checkpoint_path, export_onnx
from bnn_tvm.training.layers import BinaryActivation, BinaryConv2d, BinaryLinear
from bnn_tvm.training.quantizers import RSign
from bnn_tvm.training.train import load_checkpoint
from bnn_tvm.compilation.verify import verify

SMALL = ["digits", "bmlp", "vgg_small", "resnet20", "reactnet_block"]


def is_quantized(module: nn.Module) -> bool:
    if isinstance(module, (BinaryConv2d, BinaryLinear)):
        return module.input_quantizer is not None or module.kernel_quantizer is not None
    return isinstance(module, BinaryActivation) and module.quantizer is not None


def randomize_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and RSign thresholds, so a fresh model's thresholds are not all 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.rand(module.num_features, generator=generator) * 4 - 2)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.weight.copy_(torch.randn(module.num_features, generator=generator))
            if isinstance(module, RSign):
                module.beta.copy_(torch.randn(module.num_channels, generator=generator) * 0.5)
    return model.eval()


@pytest.mark.parametrize("name", SMALL)
def test_binary_model_and_float_twin_run(name):
    x = torch.randn(2, *models.input_shape(name))
    binary, twin = models.build(name).eval(), models.build(name, binary=False).eval()
    assert binary(x).shape == twin(x).shape == (2, 10)
    assert any(is_quantized(m) for m in binary.modules())
    assert not any(is_quantized(m) for m in twin.modules())  # the digits twin keeps unquantized Binary* layers


def test_birealnet18_layout():
    model = models.build("birealnet18")
    binary_convs = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
    float_convs = [m for m in model.modules() if type(m) is nn.Conv2d]
    assert len(binary_convs) == 16 and all(m.kernel_size == (3, 3) for m in binary_convs)
    # Float: the 7x7 stem and the three 1x1 downsampling shortcuts.
    assert sorted(m.kernel_size for m in float_convs) == [(1, 1)] * 3 + [(7, 7)]
    assert model[-1].out_features == 1000 and models.input_shape("birealnet18") == (3, 224, 224)
    assert {type(m.input_quantizer).__name__ for m in binary_convs} == {"ApproxSign"}
    assert {type(m.kernel_quantizer).__name__ for m in binary_convs} == {"MagnitudeAwareSign"}


def test_quantizer_options_and_errors():
    model = models.build("digits", input_quantizer="dorefa", kernel_quantizer="magnitude_aware_sign")
    conv = model[3]
    assert conv.input_bits == 2 and conv.weight_bits == 1 and conv.has_channel_scale
    rsign = models.build("bmlp", input_quantizer="rsign")
    assert [m.input_quantizer.beta.numel() for m in rsign.modules() if isinstance(m, BinaryLinear)] == [256, 256, 256]
    with pytest.raises(BnnError, match="unknown model 'nope'"):
        models.build("nope")
    with pytest.raises(BnnError, match="--quantizer 'rprelu'"):
        models.build("digits", input_quantizer="rprelu")
    with pytest.raises(BnnError, match="--kernel-quantizer 'rsign'"):
        models.build("digits", kernel_quantizer="rsign")


def test_bundled_digits_checkpoint_still_loads():
    model, checkpoint = load_checkpoint(default_checkpoint_path())
    assert checkpoint["model"] == "digits" and isinstance(model[3], BinaryConv2d)


@pytest.mark.parametrize("kernel_quantizer", ["magnitude_aware_sign", "libra_pb_weight"])
def test_scaled_weights_factor_into_sign_conv_and_scale(kernel_quantizer):
    torch.manual_seed(0)
    conv = BinaryConv2d(5, 7, 3, padding=1, kernel_quantizer=kernel_quantizer).eval()
    with torch.no_grad():
        conv.weight.mul_(torch.linspace(0.1, 2.0, 7).view(-1, 1, 1, 1))  # distinct channel scales
    signs, scale = conv.factored_weight()
    assert set(signs.unique().tolist()) <= {-1.0, 1.0} and scale.shape == (7,)
    x = torch.randn(3, 5, 6, 6)
    reference = torch.nn.functional.conv2d(conv.input_quantizer(x), conv.quantized_weight(), padding=1)
    torch.testing.assert_close(conv(x), reference, rtol=1e-5, atol=1e-5)


def test_export_keeps_pm1_weights_and_a_separate_scale(tmp_path):
    model = randomize_statistics(models.build("digits", kernel_quantizer="magnitude_aware_sign"))
    path = str(tmp_path / "scaled.onnx")
    export_onnx(model, models.input_shape("digits"), path)
    graph = onnx.load(path).graph
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consumers = {name: node for node in graph.node for name in node.input}
    binary_convs = [n for n in graph.node if n.op_type == "Conv" and np.all(np.abs(values[n.input[1]]) == 1)]
    assert len(binary_convs) == 2
    for conv in binary_convs:
        scale_mul = consumers[conv.output[0]]
        assert scale_mul.op_type == "Mul"
        scale = next(values[i] for i in scale_mul.input if i in values)
        assert scale.shape == (1, conv_channels(values[conv.input[1]]), 1, 1) and np.all(scale > 0)
    assert not any(n.op_type == "Sign" for n in graph.node)


def conv_channels(weight):
    return weight.shape[0]


def fused_as(kernel: str, line: str) -> bool:
    """Whether a ``fused:`` log line says a node became ``kernel`` (not merely a longer name)."""
    return re.search(rf"-> {kernel}(\s|$)", line) is not None


def export_and_verify(name, tmp_path, **options):
    torch.manual_seed(0)  # fixed weights: a float-path binarizer may flip on a near-tie for some draws
    model = randomize_statistics(models.build(name, **options))
    path = str(tmp_path / f"{name}.onnx")
    export_onnx(model, models.input_shape(name), path)
    report = verify(path, "x86")
    assert report.ok, "\n".join(report.lines())
    return report


def test_bmlp_compiles_and_verifies(tmp_path):
    report = export_and_verify("bmlp", tmp_path)
    assert sum(fused_as("binary_dense", line) for line in report.fused) >= 3


def test_scaled_digits_compiles_and_verifies(tmp_path):
    report = export_and_verify("digits", tmp_path, kernel_quantizer="magnitude_aware_sign")
    assert sum(fused_as("binary_conv2d", line) for line in report.fused) == 2
    # The per-channel scale Mul sits between conv and BN: it folds into the integer threshold.
    assert sum(fused_as("binary_conv2d_threshold", line) for line in report.fused) == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg_small", "resnet20", "reactnet_block", "birealnet18"])
def test_zoo_model_compiles_and_verifies(name, tmp_path):
    export_and_verify(name, tmp_path)
