"""``summary``: per-layer precision, parameter bits, MACs and compression ratio, from zoo, checkpoint and ONNX."""

import json

import pytest

from bnn_tvm.training import models
from bnn_tvm.cli import main
from bnn_tvm.frontend.export import default_checkpoint_path, default_model_path, export_onnx
from bnn_tvm.measure.summary import summarize, summarize_module

# The digits model counted by hand (per sample):
#   binary weights: 32*48*3*3 + 48*40*3*3 + 640*10 = 37504 bits
#   float: stem conv 1*32*3*3 = 288, BN (32+48+40+10 channels) x (gamma, beta, mean, var) = 520
#   binary MACs: 48*8*8 * 32*9 + 40*4*4 * 48*9 + 10 * 640; float MACs: 32*8*8 * 9
DIGITS_1BIT, DIGITS_32BIT = 37504, 808
DIGITS_1BIT_MACS, DIGITS_32BIT_MACS = 48 * 64 * 288 + 40 * 16 * 432 + 6400, 32 * 64 * 9


def test_digits_counts_match_hand_count():
    summary = summarize("digits")
    assert summary.params_by_bits() == {1: DIGITS_1BIT, 32: DIGITS_32BIT}
    assert summary.macs_by_bits() == {1: DIGITS_1BIT_MACS, 32: DIGITS_32BIT_MACS}
    assert summary.memory_bits == DIGITS_1BIT + 32 * DIGITS_32BIT
    assert summary.compression_ratio == pytest.approx(32 * (DIGITS_1BIT + DIGITS_32BIT) / summary.memory_bits)
    binary_conv = next(layer for layer in summary.layers if layer.kind == "BinaryConv2d")
    assert (binary_conv.input_bits, binary_conv.weight_bits, binary_conv.output_shape) == (1, 1, [48, 8, 8])
    assert [layer.kind for layer in summary.layers if layer.is_float_compute] == ["Conv2d"]


def test_onnx_and_checkpoint_agree_with_the_module():
    from_module = summarize("digits").to_dict()
    for path in (default_model_path(), default_checkpoint_path()):
        other = summarize(path).to_dict()
        for key in ("params_by_bits", "macs_by_bits", "model_size_bytes", "compression_ratio"):
            assert other[key] == from_module[key], (path, key)
    onnx_summary = summarize(default_model_path())
    assert onnx_summary.source == "onnx" and len(onnx_summary.float_layers) == 1


def test_scales_and_dorefa_counted_alike_in_onnx(tmp_path):
    """Per-channel weight scales are 32-bit parameters; DoReFa inputs give 2-bit MACs (both sources)."""
    model = models.build("digits", input_quantizer="dorefa", kernel_quantizer="magnitude_aware_sign")
    path = str(tmp_path / "dorefa_scaled.onnx")
    export_onnx(model, models.input_shape("digits"), path)
    from_module = summarize_module(model, models.input_shape("digits"), "digits", "zoo")
    from_onnx = summarize(path)
    scale_params = 48 + 40 + 10
    assert from_module.params_by_bits() == {1: DIGITS_1BIT, 32: DIGITS_32BIT + scale_params}
    assert from_onnx.params_by_bits() == from_module.params_by_bits()
    assert from_module.macs_by_bits() == {2: DIGITS_1BIT_MACS, 32: DIGITS_32BIT_MACS}
    assert from_onnx.macs_by_bits() == from_module.macs_by_bits()


def test_birealnet18_compression_and_float_layers():
    summary = summarize("birealnet18")
    assert summary.compression_ratio >= 11
    floats = [layer for layer in summary.layers if layer.is_float_compute]
    assert sorted(layer.kind for layer in floats) == ["Conv2d"] * 4 + ["Linear"]  # stem, 3 shortcuts, classifier
    assert summary.params_by_bits()[1] == 9 * (4 * 64 * 64 + 64 * 128 + 3 * 128 * 128 + 128 * 256
                                               + 3 * 256 * 256 + 256 * 512 + 3 * 512 * 512)
    assert 0.9 < summary.binary_mac_fraction < 0.95


def test_cli_json_and_table(capsys):
    assert main(["summary", "digits", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["compression_ratio"] == pytest.approx(summarize("digits").compression_ratio)
    assert report["params_by_bits"] == {"1": DIGITS_1BIT, "32": DIGITS_32BIT}
    assert main(["summary", "birealnet18"]) == 0
    table = capsys.readouterr().out
    assert "Compression ratio vs fp32" in table and "Float layers (5)" in table


def test_cli_names_a_bad_model(capsys, tmp_path):
    assert main(["summary", "no_such_model"]) == 2
    assert "no_such_model" in capsys.readouterr().err
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    assert main(["summary", str(junk)]) == 2
    assert "junk.onnx" in capsys.readouterr().err


def test_pytorch_export_forms_counted_as_binary(tmp_path):
    """``torch.where(x >= 0, ones_like(x), -ones_like(x))`` is a binarizer (its ±1 tensors are
    not parameters), and a weight that is ±alpha per output channel (an exporter folded a batch
    norm into it) is 1-bit with one float scale per channel."""
    import numpy as np
    from conftest import binarize_ones_like
    from onnx_builders import GraphBuilder, save

    g = GraphBuilder([1, 6, 5, 5], seed=3)
    alphas = np.array([0.5, -2.0, 3.0, 1.5], np.float32).reshape(4, 1, 1, 1)
    out = g.conv(binarize_ones_like(g, "x"), g.binary_weight((4, 6, 3, 3)) * alphas, pad=1)
    summary = summarize(save(g.model([out]), tmp_path / "m.onnx"))
    (conv,) = summary.layers
    assert (conv.input_bits, conv.weight_bits) == (1, 1)
    assert summary.params_by_bits() == {1: 4 * 6 * 9, 32: 4}
    assert summary.macs_by_bits() == {1: 4 * 25 * 6 * 9}


@pytest.mark.parametrize("name", ["dfsmn", "bibert_layer", "bipointnet"])
def test_published_forms_onnx_agrees_with_zoo(tmp_path, name):
    """The ONNX summary of a published form counts what the zoo summary counts: BiBench's
    straight-through ``sign - clamp + clamp`` binarizer feeds 1-bit convs (DFSMN), Bi-Attention's
    two activation matmuls are 1-bit MACs (BiBERT), and one-element parameters (PReLU slopes,
    BiPointNet's layer-wise scales) are counted. Seeded: a random latent weight that is exactly 0
    (about one BiBERT build in 20) makes ``sign(W)`` ternary, which the ONNX summary rightly
    counts as float while the zoo summary takes the module's declared 1 bit."""
    import torch

    torch.manual_seed(0)
    path = str(tmp_path / f"{name}.onnx")
    export_onnx(models.build(name), models.input_shape(name), path)
    from_onnx, from_zoo = summarize(path), summarize(name)
    assert from_onnx.macs_by_bits() == from_zoo.macs_by_bits()
    assert from_onnx.params_by_bits() == from_zoo.params_by_bits()
    assert len(from_onnx.float_layers) == len(from_zoo.float_layers)


@pytest.mark.parametrize("layer", ["xnor", "fda"])
def test_bibench_forms_counted_as_binary(tmp_path, layer):
    """BiBench's XNOR-Net (``bibench/models/layers/xnor.py``: the per-sample scale inside the
    estimator, weights ``mean|W| * sign(W)`` whose folded float32 values are an ulp off ``±alpha``
    in places) and FDA (``fda.py``: ``sign(a) + 0 * noise(a)`` once ``alpha`` decayed) count their
    binary convs as 1-bit: the summary said binarized fraction 0 for both."""
    import warnings

    from published_bnn import BiBenchFdaConv, BiBenchXnorConv, bibench_resnet, export

    model = bibench_resnet({"xnor": BiBenchXnorConv, "fda": BiBenchFdaConv}[layer])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export(model, tmp_path / f"{layer}.onnx", dynamo=False, size=16)
    binary_convs = [m for m in model.modules() if isinstance(m, (BiBenchXnorConv, BiBenchFdaConv))]
    summary = summarize(path)
    # six binary 3x3 convs: 16x16 maps at 16 channels (two), 8x8 at 16->32 and 32, 4x4 at 32->64 and 64
    expected = 16 * 16 * 16 * 16 * 9 * 2 + 8 * 8 * 32 * (16 + 32) * 9 + 4 * 4 * 64 * (32 + 64) * 9
    assert len(binary_convs) == 6 and summary.macs_by_bits()[1] == expected
