"""``masked_fills_as_where``: ``torch.export``'s ``out[mask] = c`` (``ScatterND`` on ``NonZero``
indices, which TVM's ONNX importer cannot take) as ``Where(mask, c, out)`` before the import.

The form is BiBERT's ``ZMeanBinaryQuantizer`` (``transformer/utils_quant.py`` of htqin/BiBERT:
``out = torch.sign(x); out[out == -1] = 0``), exported with PyTorch's default exporter.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from torch import nn

from bnn_tvm.compilation.compiler import read_pinned
from bnn_tvm.compilation.verify import verify
from bnn_tvm.frontend.masked_fill import masked_fills_as_where


class ZeroMeanSign(nn.Module):
    """``ZMeanBinaryQuantizer.forward`` after a float linear (so ``Sign`` sees a float tensor);
    ``fill_from_input``: ``out[mask] = x[mask]`` instead, values that are not one constant."""

    def __init__(self, fill_from_input: bool = False):
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.fill_from_input = fill_from_input

    def forward(self, x):
        h = self.linear(x)
        out = torch.sign(h)
        mask = out == -1
        if self.fill_from_input:
            out[mask] = h[mask]
        else:
            out[mask] = 0
        return out


def exported(tmp_path, fill_from_input: bool = False) -> str:
    torch.manual_seed(0)
    path = str(tmp_path / f"masked_fill_{fill_from_input}.onnx")
    torch.onnx.export(ZeroMeanSign(fill_from_input).eval(), (torch.randn(2, 4, 8),), path, dynamo=True,
                      input_names=["x"])
    return path


def test_masked_fill_becomes_where_and_verifies(tmp_path):
    path = exported(tmp_path)
    assert "ScatterND" in {n.op_type for n in onnx.load(path).graph.node}  # the exporter's form
    pinned, _, _ = read_pinned(path)
    ops = {n.op_type for n in pinned.graph.node}
    assert "Where" in ops and not ops & {"ScatterND", "NonZero"}, ops
    x = np.random.default_rng(0).standard_normal((16, 4, 8)).astype(np.float32)
    report = verify(path, "x86", x=x)
    assert report.exact and report.max_abs_diff == 0, "\n".join(report.lines())


def test_fill_with_values_that_are_not_one_constant_is_left(tmp_path):
    """``out[mask] = h[mask]`` writes the selected values, not one constant: no ``Where`` for it."""
    path = exported(tmp_path, fill_from_input=True)
    model = onnx.load(path)
    model = onnx.shape_inference.infer_shapes(model)
    assert masked_fills_as_where(model) == 0
    assert "ScatterND" in {n.op_type for n in model.graph.node}
