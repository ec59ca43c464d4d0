"""Random binarized ONNX graphs built from the forms the passes recognise, for exactness sweeps.

Each graph chains a few random blocks (plain, residual, concatenated or shared-input binary
convs, per-channel ops after them, OR pools on bits, XNOR-Net's conv -> pool -> BN order, RSign,
grouped and dilated convs, explicit ±1 padding, a Bi-Real downsampling block, a ``Sign`` that
can be 0, a binary dense at the end; a third of the binarizers strict, ``x > 0``) with random channel counts, sizes and batch norms (some
with negative gammas), and exposes a few inner tensors as graph outputs; token graphs chain
binary matmuls on ``[N, T, C]`` with elementwise ops and residual adds. ``verify`` must find
every one exact: the combinations are what no hand-written case covers. The tests check fixed
seeds; ``tools/random_graph_sweep.py`` verifies a range of seeds on any target.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx_builders import GraphBuilder


def channel_ops(g: GraphBuilder, t: str, c: int, rng) -> str:
    """Up to three per-channel float ops: constant add/subtract/multiply, PReLU, ReLU, Clip."""
    for _ in range(rng.integers(0, 4)):
        kind = rng.choice(["Sub", "Add", "Mul", "PRelu", "Relu", "Clip"])
        if kind in ("Sub", "Add", "Mul"):
            const = rng.standard_normal((1, c, 1, 1)).astype(np.float32)
            t = g.node(kind, [t, g.const(np.abs(const) + np.float32(0.1) if kind == "Mul" else const)])
        elif kind == "PRelu":
            t = g.node("PRelu", [t, g.const(rng.uniform(0.1, 0.9, (c, 1, 1)).astype(np.float32))])
        elif kind == "Relu":
            t = g.node("Relu", [t])
        else:
            t = g.node("Clip", [t, g.const(np.float32(-1.5)), g.const(np.float32(1.5))])
    return t


def rsign(g: GraphBuilder, t: str, c: int, rng) -> str:
    """ReActNet's RSign: ``Where(x >= beta, 1, -1)`` with a per-channel beta."""
    beta = g.const((rng.standard_normal((1, c, 1, 1)) * 0.3).astype(np.float32))
    return g.node("Where", [g.node("GreaterOrEqual", [t, beta]), g.const(np.float32(1)), g.const(np.float32(-1))])


def bn_conv(g: GraphBuilder, bits: str, cout: int, cin: int, k: int = 3, **conv) -> str:
    return g.batch_norm(g.conv(bits, g.binary_weight((cout, cin, k, k)), **conv), *g.random_bn(cout, 0.3))


def block(g: GraphBuilder, t: str, c: int, hw: int, rng) -> tuple[str, int, int]:
    """One random block on ``t`` (``c`` channels, ``hw`` x ``hw``): ``(output, channels, hw)``."""
    kind = rng.choice(["plain", "residual", "concat", "shared", "pool_bits", "xnor_order", "rsign", "grouped",
                       "down", "pad", "dilated", "sign"])
    cout = int(rng.integers(5, 40))
    if kind == "residual":
        y = channel_ops(g, bn_conv(g, g.binarize(t), c, c, pad=1), c, rng)
        return channel_ops(g, g.node("Add", [y, t]), c, rng), c, hw
    if kind == "concat":  # ReActNet's reduction: parts of the same bits, each plus the input
        bits, parts = g.binarize(t), []
        for _ in range(int(rng.integers(2, 4))):
            k = int(rng.choice([1, 3]))
            y = bn_conv(g, bits, c, c, k, pad=k // 2)
            parts.append(g.node("Add", [y, t]) if rng.random() < 0.7 else y)
        return channel_ops(g, g.node("Concat", parts, axis=1), c * len(parts), rng), c * len(parts), hw
    if kind == "shared":  # two layers, each with its own binarizer of the same tensor
        a = bn_conv(g, g.binarize(t), c, c, pad=1)
        b = bn_conv(g, g.binarize(t), c, c, 1)
        return channel_ops(g, g.node("Add", [a, b]), c, rng), c, hw
    if kind == "pool_bits" and hw >= 4:
        pooled = g.node("MaxPool", [g.binarize(t)], kernel_shape=[2, 2], strides=[2, 2])
        return channel_ops(g, bn_conv(g, pooled, cout, c, pad=1), cout, rng), cout, hw // 2
    if kind == "xnor_order" and hw >= 4:  # conv -> max pool -> BN -> (next block's binarizer)
        conv = g.conv(g.binarize(t), g.binary_weight((cout, c, 3, 3)), pad=1)
        pooled = g.node("MaxPool", [conv], kernel_shape=[2, 2], strides=[2, 2])
        return g.batch_norm(pooled, *g.random_bn(cout, 0.3)), cout, hw // 2
    if kind == "rsign":
        return channel_ops(g, bn_conv(g, rsign(g, t, c, rng), cout, c, pad=1), cout, rng), cout, hw
    if kind == "grouped" and c >= 32 and c % 2 == 0:
        y = g.node("Conv", [g.binarize(t), g.const(g.binary_weight((c, c // 2, 3, 3)), "w")],
                   kernel_shape=[3, 3], pads=[1] * 4, group=2)
        return channel_ops(g, g.batch_norm(y, *g.random_bn(c, 0.3)), c, rng), c, hw
    if kind == "down" and hw >= 4 and hw % 2 == 0:  # Bi-Real: stride-2 conv + average-pooled shortcut
        short = g.node("AveragePool", [t], kernel_shape=[2, 2], strides=[2, 2])
        y = g.node("Add", [bn_conv(g, g.binarize(t), c, c, stride=2, pad=1), short])
        return channel_ops(g, y, c, rng), c, hw // 2
    if kind == "pad":
        pads = g.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))
        padded = g.node("Pad", [g.binarize(t), pads, g.const(np.float32(rng.choice([1.0, -1.0])))])
        return bn_conv(g, padded, cout, c), cout, hw
    if kind == "dilated" and hw >= 5:
        y = g.node("Conv", [g.binarize(t), g.const(g.binary_weight((cout, c, 3, 3)), "w")],
                   kernel_shape=[3, 3], dilations=[2, 2], pads=[2] * 4)
        return g.batch_norm(y, *g.random_bn(cout, 0.3)), cout, hw
    if kind == "sign":  # can be 0: two bipolar halves
        return bn_conv(g, g.node("Sign", [t]), cout, c, pad=1), cout, hw
    stride = int(rng.choice([1, 2])) if hw > 4 else 1
    k = int(rng.choice([1, 3]))
    y = channel_ops(g, bn_conv(g, g.binarize(t), cout, c, k, stride=stride, pad=k // 2), cout, rng)
    return y, cout, (hw + 2 * (k // 2) - k) // stride + 1


def some_strict_binarizers(g: GraphBuilder, seed: int) -> None:
    """Make about a third of ``g``'s binarizers strict (``Where(x > 0, 1, -1)``), drawn from a
    generator of their own, so that each seed's graph keeps its structure."""
    draw, plain = np.random.default_rng(seed + 1_000_003), g.binarize
    g.binarize = lambda x: plain(x, strict=bool(draw.random() < 1 / 3))


def random_graph(seed: int) -> tuple[onnx.ModelProto, np.ndarray]:
    """``(model, input)``: a random graph and a batch of 2 inputs for it (some exact zeros)."""
    rng = np.random.default_rng(seed)
    c, hw = int(rng.integers(4, 40)), int(rng.integers(5, 12))
    g = GraphBuilder([1, c, hw, hw], seed=seed)
    some_strict_binarizers(g, seed)
    t, outputs = "x", []
    for _ in range(int(rng.integers(2, 5))):
        t, c, hw = block(g, t, c, hw, rng)
        if rng.random() < 0.3:
            outputs.append(t)
    if rng.random() < 0.4:
        flat = g.node("Flatten", [g.binarize(t)])
        t = g.node("Gemm", [flat, g.const(g.binary_weight((7, c * hw * hw)), "w")], transB=1)
    outputs.append(t)
    x = rng.standard_normal((2, *g.shape[1:])).astype(np.float32)
    x[:, :, ::4] = 0.0
    return g.model(list(dict.fromkeys(outputs))), x


def token_ops(g: GraphBuilder, t: str, c: int, rng) -> str:
    """Up to three elementwise ops on ``[N, T, c]`` tokens: per-feature or scalar constants,
    ReLU, Clip."""
    for _ in range(rng.integers(0, 4)):
        kind = rng.choice(["Sub", "Add", "Mul", "Relu", "Clip"])
        if kind in ("Sub", "Add", "Mul"):
            shape = [(), (c,), (1, 1, c)][int(rng.integers(0, 3))]
            const = rng.standard_normal(shape).astype(np.float32)
            t = g.node(kind, [t, g.const(np.abs(const) + np.float32(0.1) if kind == "Mul" else const)])
        elif kind == "Relu":
            t = g.node("Relu", [t])
        else:
            t = g.node("Clip", [t, g.const(np.float32(-2.0)), g.const(np.float32(2.0))])
    return t


def random_token_graph(seed: int) -> tuple[onnx.ModelProto, np.ndarray]:
    """``(model, input)``: binary matmuls on ``[N, T, C]`` tokens (features last) with elementwise
    ops and residual adds between them, as in binary MLP-Mixer or transformer layers."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    tokens, c = int(rng.integers(2, 9)), int(rng.integers(8, 80))
    g = GraphBuilder([1, tokens, c], seed=seed)
    some_strict_binarizers(g, seed)
    g.input = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", tokens, c])
    t, outputs = "x", []
    for _ in range(int(rng.integers(1, 4))):
        hidden = int(rng.integers(8, 80))
        h = token_ops(g, g.node("MatMul", [g.binarize(t), g.const(g.binary_weight((c, hidden)), "w")]), hidden, rng)
        out = token_ops(g, g.node("MatMul", [g.binarize(h), g.const(g.binary_weight((hidden, c)), "w")]), c, rng)
        t = g.node("Add", [out, t]) if rng.random() < 0.6 else out
        if rng.random() < 0.3:
            outputs.append(h)
    outputs.append(t)
    x = rng.standard_normal((2, tokens, c)).astype(np.float32)
    x[:, ::3] = 0.0
    return g.model(list(dict.fromkeys(outputs))), x


def sign_or_binarizer(g: GraphBuilder, t: str, rng) -> str:
    """``Sign`` (half the time), ``Where(x >= 0, 1, -1)`` or the strict ``Where(x > 0, 1, -1)``."""
    kind = rng.choice(["sign", "sign", "where", "strict"])
    return g.node("Sign", [t]) if kind == "sign" else g.binarize(t, strict=bool(kind == "strict"))


def random_sign_graph(seed: int) -> tuple[onnx.ModelProto, np.ndarray]:
    """``(model, input)``: BinaryNet-style layers, each ``Sign`` (or a binarizer) -> conv
    (±1 or ±alpha weights) -> maybe a max pool -> BN (some negative gammas) -> maybe Hardtanh or
    ReLU, after an optional float stem, maybe ending in a flatten and a binary dense: the
    ``Sign`` rounds prove some ``Sign``s binary and split the others."""
    rng = np.random.default_rng(seed)
    c, hw = int(rng.choice([7, 8, 12, 16])), int(rng.choice([6, 8, 9]))
    g = GraphBuilder([1, c, hw, hw], seed=seed)
    t = "x"
    if rng.random() < 0.5:  # a float stem: the first Sign after it can see 0
        stem = g.conv(t, rng.standard_normal((c, c, 3, 3)).astype(np.float32), pad=1)
        t = g.node("Clip", [g.batch_norm(stem, *g.random_bn(c, 0.3)), g.const(np.float32(-1)), g.const(np.float32(1))])
    for _ in range(int(rng.integers(2, 5))):
        cout = int(rng.choice([6, 8, 16, 32]))
        w = g.binary_weight((cout, c, 3, 3))
        if rng.random() < 0.3:
            w = w * rng.uniform(0.2, 2, (cout, 1, 1, 1)).astype(np.float32)
        y = g.conv(sign_or_binarizer(g, t, rng), w, pad=1)
        if rng.random() < 0.4 and hw >= 4:
            y, hw = g.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2]), hw // 2
        y = g.batch_norm(y, *g.random_bn(cout, 0.3))
        kind = rng.choice(["clip", "relu", "none"])
        if kind == "clip":
            y = g.node("Clip", [y, g.const(np.float32(-1)), g.const(np.float32(1))])
        elif kind == "relu":
            y = g.node("Relu", [y])
        t, c = y, cout
    if rng.random() < 0.5:
        flat = g.node("Flatten", [sign_or_binarizer(g, t, rng)])
        t = g.node("MatMul", [flat, g.const(g.binary_weight((c * hw * hw, 10)), "w")])
    x = rng.standard_normal((2, *g.shape[1:])).astype(np.float32)
    x[:, :, ::3] = 0.0
    return g.model([t]), x


GENERATORS = {"nchw": random_graph, "tokens": random_token_graph, "signs": random_sign_graph}  # the sweep's --KIND picks one
