"""Models written the way published BNN code writes them (``published_bnn``), exported with both
of PyTorch's exporters: every binary conv runs as a binary kernel and verifies exactly."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from published_bnn import FORMS, PAD_SHORTCUT, binarynet_resnet, export, resnet

from bnn_tvm.compilation.inspection import inspect_onnx
from bnn_tvm.compilation.verify import verify



def binarizer_inputs(batch=4, size=16, seed=3):
    """Random normal images with exact zeros: where ``sign`` gives 0."""
    x = np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)
    x[:, :, ::4] = 0.0
    return x


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("form", sorted(FORMS))
def test_published_form_compiles_to_binary_kernels_exactly(tmp_path, form, dynamo):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export(resnet(form, blocks=1), tmp_path / f"{form}.onnx", dynamo, size=16)
    convs = [r for r in inspect_onnx(path) if r.op_type == "Conv"]
    binary = [r for r in convs if r.binary]
    float_convs = 1 if form in PAD_SHORTCUT else 3  # the stem and the downsampling shortcuts
    assert len(binary) == len(convs) - float_convs == 6, [(r.name, r.note) for r in convs if not r.binary]
    report = verify(path, "x86", x=binarizer_inputs())
    assert report.ok, "\n".join(report.lines())
    assert report.binary_checked >= 6  # every binarized tensor compared with ONNX Runtime's


@pytest.mark.parametrize("do_bntan", [True, False], ids=["bn_hardtanh", "bare_residual"])
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_binarynet_resnet_with_torch_sign_everywhere(tmp_path, dynamo, do_bntan):
    """BinaryNet.pytorch's ResNet: ``torch.sign`` on every conv's input (the block input is
    also the residual operand of an add that folds into a binary conv's epilogue) and weights;
    with ``do_bntan=False`` the residual sum itself feeds the next block's ``Sign``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export(binarynet_resnet(blocks=1, do_bntan=do_bntan), tmp_path / "binarynet.onnx", dynamo, size=16)
    convs = [r for r in inspect_onnx(path) if r.op_type == "Conv"]
    assert [r.name for r in convs if not r.binary] == [convs[0].name]  # the stem reads the float image
    assert all(r.binary for r in inspect_onnx(path) if r.op_type == "Sign" and "constant-folded" not in r.note)
    report = verify(path, "x86", x=binarizer_inputs())
    assert report.ok, "\n".join(report.lines())
    assert report.binary_checked >= 6
