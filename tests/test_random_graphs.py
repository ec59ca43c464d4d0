"""Random combinations of the binarized forms (``random_graphs.py``), each exact against ORT.

The default run checks 16 fixed seeds; ``python tests/random_graphs.py FIRST LAST`` sweeps more.
"""

from __future__ import annotations

import pytest
from onnx_builders import save
from random_graphs import random_graph

from bnn_tvm.verify import verify


@pytest.mark.parametrize("seed", range(16))
def test_random_graph_is_exact(tmp_path, seed):
    model, x = random_graph(seed)
    report = verify(save(model, tmp_path / "m.onnx"), "x86", x=x)
    assert report.ok, "\n".join(report.lines())
    assert report.binary_checked >= 1, report.fused  # binary kernels ran, and their bits were compared
