"""The zoo's published-form models (``bnn_tvm.training.published_models``): BiBERT's encoder layer,
BiPointNet and BiBench's binarized DFSMN. Each exports (``export NAME``), compiles, verifies
exactly against ONNX Runtime, has a float twin of the same output shape, and ``summary`` counts
its binary MACs."""

import pytest
import torch

from bnn_tvm.training import models
from bnn_tvm.cli import main
from bnn_tvm.errors import BnnError
from bnn_tvm.measure.summary import summarize
from bnn_tvm.compilation.verify import verify

# name -> least binary MAC share ``summary`` must report (DFSMN: 96.5 %, as BiBench binarizes it)
BINARY_SHARE = {"bibert_layer": 0.99, "bipointnet": 0.99, "dfsmn": 0.96}


@pytest.mark.parametrize("name", sorted(BINARY_SHARE))
def test_float_twin_and_binary_mac_share(name):
    x = torch.randn(2, *models.input_shape(name))
    binary, twin = models.build(name).eval(), models.build(name, binary=False).eval()
    assert binary(x).shape == twin(x).shape
    summary = summarize(name)
    assert summary.binary_mac_fraction >= BINARY_SHARE[name], summary.table()


def test_dfsmn_layout():
    summary = summarize("dfsmn")
    macs = summary.macs_by_bits()
    assert macs == {1: 10_256_384, 32: 376_832}  # 96.46 % binary
    assert summary.float_layers == ["front_end.0", "fc1.0", "head"]


def test_fixed_forms_take_no_quantizer_options():
    with pytest.raises(BnnError, match="no quantizer options"):
        models.build("dfsmn", input_quantizer="ste_sign")


@pytest.mark.parametrize("name", sorted(BINARY_SHARE))
def test_exports_compiles_and_verifies_exactly(name, tmp_path):
    path = str(tmp_path / f"{name}.onnx")
    assert main(["export", name, "-o", path]) == 0
    report = verify(path, "x86")
    assert report.ok, "\n".join(report.lines())
