"""FlattenChannelConcats: nested concats that nothing else reads become one concat."""

from __future__ import annotations

import numpy as np
import pytest
from onnx_builders import GraphBuilder, save

from bnn_tvm.compilation.compiler import lower_onnx
from bnn_tvm.compilation.verify import verify


def nested_model(path, inner_is_output: bool) -> str:
    """``concat(concat(conv_a(b), conv_b(b)), conv_c(b))`` of binary convs on the bits ``b``,
    then a batch norm; ``inner_is_output``: the inner concat is a graph output too."""
    g = GraphBuilder([1, 32, 6, 6], seed=41)
    bits = g.binarize("x")
    convs = [g.conv(bits, g.binary_weight((32, 32, 3, 3)), pad=1) for _ in range(3)]
    inner = g.node("Concat", convs[:2], axis=1)
    outer = g.node("Concat", [inner, convs[2]], axis=1)
    out = g.batch_norm(outer, *g.random_bn(96))
    return save(g.model([out] + ([inner] if inner_is_output else [])), path)


@pytest.mark.parametrize("inner_is_output", [False, True])
def test_nested_concats_join_unless_read_elsewhere(tmp_path, inner_is_output):
    path = nested_model(tmp_path / "m.onnx", inner_is_output)
    x = np.random.default_rng(42).standard_normal((2, 32, 6, 6)).astype(np.float32)
    report = verify(path, "x86", x=x)
    assert report.ok, "\n".join(report.lines())
    concats = lower_onnx(path).mod["main"].script().count("R.concat(")
    assert concats == (2 if inner_is_output else 1)
