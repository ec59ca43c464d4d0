"""Random combinations of the binarized forms (``random_graphs.py``), each exact against ORT.

The default run checks fixed seeds; ``python tools/random_graph_sweep.py FIRST LAST [--tokens|--signs]``
sweeps more.
"""

from __future__ import annotations

import pytest
from onnx_builders import save
from random_graphs import random_graph, random_sign_graph, random_token_graph

from bnn_tvm.compilation.verify import verify


def check_exact(model, x, path, kernels=("-> binary_", "-> ternary_"), compared=True):
    """``kernels``: one of them ran; ``compared``: some binarizer's bits were compared with ORT's
    (a graph whose every ``Sign`` is split into halves has none: the halves are not an ONNX tensor)."""
    report = verify(save(model, path), "x86", x=x)
    assert report.ok, "\n".join(report.lines())
    assert report.binary_checked >= int(compared), report.fused  # binary kernels ran, and their bits were compared
    assert any(kernel in line for line in report.fused for kernel in kernels), report.fused


@pytest.mark.parametrize("seed", range(16))
def test_random_graph_is_exact(tmp_path, seed):
    check_exact(*random_graph(seed), tmp_path / "m.onnx")


@pytest.mark.parametrize("seed", range(8))
def test_random_token_graph_is_exact(tmp_path, seed):
    check_exact(*random_token_graph(seed), tmp_path / "m.onnx", ("-> binary_dense",))


@pytest.mark.parametrize("seed", range(6))
def test_random_sign_graph_is_exact(tmp_path, seed):
    check_exact(*random_sign_graph(seed), tmp_path / "m.onnx", compared=False)
