"""Small ONNX graphs built with onnx.helper, independent of the project's exporter.

Each builder returns a model whose binary layers use the forms users' exporters produce, so the
passes are tested on graphs they did not write themselves.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18


class GraphBuilder:
    def __init__(self, input_shape, seed=0):
        self.rng = np.random.default_rng(seed)
        self.nodes = []
        self.inits = []
        self.count = 0
        self.input = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *input_shape[1:]])
        self.shape = list(input_shape)

    def name(self, prefix):
        self.count += 1
        return f"{prefix}_{self.count}"

    def const(self, array, prefix="c"):
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op, inputs, **attrs):
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"node_{out}", **attrs))
        return out

    def binarize(self, x, strict=False):
        """``Where(x >= 0, 1, -1)``: the exact binarizer form (``strict``: ``Where(x > 0, 1, -1)``)."""
        ge = self.node("Greater" if strict else "GreaterOrEqual", [x, self.const(np.float32(0))])
        return self.node("Where", [ge, self.const(np.float32(1)), self.const(np.float32(-1))])

    def larq_binarizer_nhwc(self, x, pad_one: bool):
        """Larq's ``ste_sign`` as tf2onnx exports it for NCHW inputs: ``Sign(Add(Sign(x), 0.1))`` in
        NHWC between two transposes, with Larq's ``pad_values=1`` as an NHWC ``Pad`` before the second."""
        nhwc = self.node("Transpose", [x], perm=[0, 2, 3, 1])
        bits = self.node("Sign", [self.node("Add", [self.node("Sign", [nhwc]), self.const(np.float32(0.1))])])
        if pad_one:
            pads = self.const(np.array([0, 1, 1, 0, 0, 1, 1, 0], np.int64))
            bits = self.node("Pad", [bits, pads, self.const(np.float32(1))], mode="constant")
        return self.node("Transpose", [bits], perm=[0, 3, 1, 2])

    def binary_weight(self, shape):
        return np.where(self.rng.standard_normal(shape) >= 0, 1.0, -1.0).astype(np.float32)

    def conv(self, x, weight, stride=1, pad=0, bias=None):
        inputs = [x, self.const(weight, "w")] + ([self.const(bias, "b")] if bias is not None else [])
        return self.node("Conv", inputs, strides=[stride, stride], pads=[pad] * 4, kernel_shape=list(weight.shape[2:]))

    def batch_norm(self, x, gamma, beta, mean, var, eps=1e-5):
        consts = [self.const(np.asarray(v, np.float32), "bn") for v in (gamma, beta, mean, var)]
        return self.node("BatchNormalization", [x, *consts], epsilon=eps)

    def random_bn(self, channels, negative_fraction=0.0):
        gamma = self.rng.uniform(0.3, 1.5, channels).astype(np.float32)
        gamma[self.rng.random(channels) < negative_fraction] *= -1
        beta = self.rng.uniform(-1, 1, channels).astype(np.float32)
        mean = self.rng.uniform(-4, 4, channels).astype(np.float32)
        var = self.rng.uniform(0.5, 3, channels).astype(np.float32)
        return gamma, beta, mean, var

    def model(self, outputs) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "test_graph",
            [self.input],
            [helper.make_empty_tensor_value_info(o) for o in outputs],
            initializer=self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 9
        return model


def save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)


def conv_block_model(cin, cout, size, stride=1, pad=1, kernel=3, negative_fraction=0.0, seed=0, bn=None):
    """binarize(x) -> binary conv -> BN -> binarize -> binary conv -> output (float)."""
    g = GraphBuilder([1, cin, size, size], seed)
    a = g.binarize("x")
    w1 = g.binary_weight((cout, cin, kernel, kernel))
    y = g.conv(a, w1, stride=stride, pad=pad)
    y = g.batch_norm(y, *(bn if bn is not None else g.random_bn(cout, negative_fraction)))
    b = g.binarize(y)
    w2 = g.binary_weight((7, cout, 3, 3))
    out = g.conv(b, w2, pad=1)
    return g.model([out]), w1


def dilated_conv_graph(seed=5):
    """Two dilated binary convs: zero padded (dilation 2) with a batch norm folded into the next
    binarizer's thresholds, then asymmetric dilation (2, 1), stride 2, asymmetric padding."""
    g = GraphBuilder([1, 32, 9, 9], seed=seed)
    first = g.node("Conv", [g.binarize("x"), g.const(g.binary_weight((40, 32, 3, 3)), "w")],
                   kernel_shape=[3, 3], dilations=[2, 2], pads=[2, 2, 2, 2])
    y = g.batch_norm(first, *g.random_bn(40))
    out = g.node("Conv", [g.binarize(y), g.const(g.binary_weight((8, 40, 3, 3)), "w")],
                 kernel_shape=[3, 3], dilations=[2, 1], strides=[2, 2], pads=[1, 2, 3, 1])
    return g.model([out])


def grouped_conv_graph(seed=6):
    """Grouped binary convs: 2 groups of 32 channels (whole words, sliced from the packed bits)
    with zero padding, ±alpha weights and a batch norm folded into the next binarizer; 3 groups
    of 16 after an explicit +1 Pad, stride 2; 2 groups of 21 (not whole words), zero padded;
    and a conv with 4 channels per group, which stays float."""
    g = GraphBuilder([1, 64, 7, 7], seed=seed)
    alpha = np.float32(2.0) ** g.rng.integers(-2, 2, (48, 1, 1, 1))  # powers of two: exact
    first = g.node("Conv", [g.binarize("x"), g.const((g.binary_weight((48, 32, 3, 3)) * alpha).astype(np.float32), "w")],
                   kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=2)
    padded = g.node("Pad", [g.binarize(g.batch_norm(first, *g.random_bn(48, 0.3))),
                            g.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)), g.const(np.float32(1))])
    second = g.node("Conv", [padded, g.const(g.binary_weight((42, 16, 3, 3)), "w")], kernel_shape=[3, 3],
                    strides=[2, 2], group=3)
    third = g.node("Conv", [g.binarize(second), g.const(g.binary_weight((8, 21, 3, 3)), "w")], kernel_shape=[3, 3],
                   pads=[1, 1, 1, 1], group=2)
    thin = g.node("Conv", [g.binarize(third), g.const(g.binary_weight((6, 4, 1, 1)), "w")], kernel_shape=[1, 1],
                  group=2)
    return g.model([thin])


def ternary_sign_graph(seed=6):
    """``Sign`` (which can be 0) before a conv with power-of-two weight scales (its integer sums
    stay exact, so the next ``Sign`` sees zeros too), a grouped conv (2 x 16 channels) and a
    dense after a flatten with non-power-of-two scales. Input ``[N, 21, 7, 7]``."""
    g = GraphBuilder([1, 21, 7, 7], seed=seed)
    scale = np.where(g.rng.random(32) < 0.5, 0.5, 2.0).astype(np.float32)
    y = g.conv(g.node("Sign", ["x"]), g.binary_weight((32, 21, 3, 3)) * scale[:, None, None, None], stride=2, pad=1)
    grouped = g.binary_weight((32, 16, 3, 3))
    y = g.node("Conv", [g.node("Sign", [y]), g.const(grouped, "w")], group=2, pads=[1] * 4, kernel_shape=[3, 3])
    flat = g.node("Flatten", [g.node("Sign", [y])])
    dense = g.binary_weight((10, 32 * 4 * 4)) * g.rng.uniform(0.1, 1.0, (10, 1)).astype(np.float32)
    return g.model([g.node("Gemm", [flat, g.const(dense, "w")], transB=1)])


def tie_prone_bn(g: GraphBuilder, channels: int):
    """Half the channels with gamma +-1, var 1 (for eps 0) and an integer mean: the batch norm is
    then exactly ``+-(v - mean)``, so integer sums land on the threshold itself; the rest
    random, negative gammas included."""
    gamma, beta, mean, var = g.random_bn(channels, negative_fraction=0.4)
    exact = np.arange(channels) % 2 == 0
    gamma[exact] = np.where(g.rng.random(exact.sum()) < 0.5, -1.0, 1.0)
    beta[exact], var[exact] = 0.0, 1.0
    mean[exact] = g.rng.integers(0, 12, exact.sum())
    return gamma, beta, mean, var


def pooled_threshold_graph(seed=11):
    """XNOR-Net's block order: binary conv (+ integer bias) -> max pool 3x3/2 padded -> batch
    norm (tie-prone, mixed gamma signs) -> hardtanh -> binarizer -> binary conv."""
    g = GraphBuilder([1, 24, 9, 9], seed=seed)
    bias = g.rng.integers(-2, 3, 33).astype(np.float32)
    y = g.conv(g.binarize("x"), g.binary_weight((33, 24, 3, 3)), pad=1, bias=bias)
    pooled = g.node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    normed = g.batch_norm(pooled, *tie_prone_bn(g, 33), eps=0.0)
    clipped = g.node("Clip", [normed, g.const(np.float32(-1)), g.const(np.float32(1))])
    out = g.conv(g.binarize(clipped), g.binary_weight((5, 33, 3, 3)), pad=1)
    return g.model([out])


def sign_chain_graph(seed=12):
    """BinaryNet's PyTorch layers: ``Sign`` -> ±1 conv -> max pool -> BN (mixed gamma signs) ->
    Hardtanh -> ``Sign`` -> conv -> BN -> strict binarizer (``x > 0``) -> conv. The inner
    ``Sign`` is proven never 0 (it folds into the first conv's thresholds); the first one stays
    two bipolar halves. Input ``[N, 12, 8, 8]``."""
    g = GraphBuilder([1, 12, 8, 8], seed=seed)
    y = g.conv(g.node("Sign", ["x"]), g.binary_weight((20, 12, 3, 3)), pad=1)
    pooled = g.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    clipped = g.node("Clip", [g.batch_norm(pooled, *g.random_bn(20, 0.3)), g.const(np.float32(-1)), g.const(np.float32(1))])
    y = g.batch_norm(g.conv(g.node("Sign", [clipped]), g.binary_weight((24, 20, 3, 3)), pad=1), *g.random_bn(24, 0.3))
    return g.model([g.conv(g.binarize(y, strict=True), g.binary_weight((6, 24, 3, 3)), pad=1)])


def quant_planes_graph(seed=23, channels=16, size=6):
    """A signed 4-bit QONNX ``Quant`` (power-of-two scale) on the input feeding a zero-padded conv
    with float output (``multibit_conv2d``, padded with the level of 0) and one whose batch norm
    and binarizer fold into thresholds (``multibit_conv2d_threshold``)."""
    domain = "qonnx.custom_op.general"
    g = GraphBuilder([1, channels, size, size], seed=seed)
    planes = g.name("quant")
    scale, zero, bits = (g.const(np.float32(v)) for v in (0.25, 0, 4))
    g.nodes.append(helper.make_node("Quant", ["x", scale, zero, bits], [planes], name="input_quant", domain=domain,
                                    signed=1, narrow=0, rounding_mode="ROUND"))
    out = g.conv(planes, g.binary_weight((channels, channels, 3, 3)), pad=1)
    y = g.batch_norm(g.conv(planes, g.binary_weight((channels, channels, 3, 3)), pad=1), *g.random_bn(channels, 0.3))
    folded = g.conv(g.binarize(y), g.binary_weight((8, channels, 1, 1)))
    model = g.model([out, folded])
    model.opset_import.append(helper.make_opsetid(domain, 1))
    return model


def ttq(rng, shape, plus, minus, zeros=0.35) -> np.ndarray:
    """TTQ's ``{-a, 0, +b}`` weights (``plus`` b, ``minus`` a: per layer scalars or per output
    channel arrays), folded in float32 as ``Wp * pos - Wn * neg``."""
    signs = np.where(rng.standard_normal(shape) >= 0, 1.0, -1.0)
    signs[rng.random(shape) < zeros] = 0
    column = lambda v: np.asarray(v, np.float32).reshape(-1, *[1] * (len(shape) - 1))  # noqa: E731
    return (column(plus) * (signs > 0) - column(minus) * (signs < 0)).astype(np.float32)


def ttq_graph(b=0.625, a=1.375):
    """TTQ convs: on a binarizer (per-layer scales ``b``, ``a``, then a batch norm and binarizer:
    the proven margin), per-channel scales with a float output, and on a ``Sign`` that sees 0
    (both operands ternary) with a batch norm and ``Sign`` after it; a dense on a binarizer and
    one on a ``Sign``. The default scales are multiples of 1/8: every sum is exact on both sides."""
    g = GraphBuilder([1, 16, 8, 8], seed=41)
    rng = np.random.default_rng(41)
    y = g.batch_norm(g.conv(g.binarize("x"), ttq(rng, (24, 16, 3, 3), b, a), pad=1), *g.random_bn(24, 0.3))
    per_channel = ttq(rng, (16, 24, 3, 3), rng.uniform(0.2, 2, 16), rng.uniform(0.2, 2, 16))
    out = g.conv(g.binarize(y), per_channel, pad=1)
    z = g.batch_norm(g.conv(g.node("Sign", ["x"]), ttq(rng, (16, 16, 3, 3), 0.25, 0.75), pad=1), *g.random_bn(16, 0.3))
    z = g.conv(g.node("Sign", [z]), ttq(rng, (8, 16, 3, 3), 1.1, 0.45), pad=1, stride=2)
    # denses: on a binarizer after a batch norm (per-output scales), then on a Sign that sees 0
    flat = g.node("Flatten", [g.binarize(g.batch_norm(z, *g.random_bn(8, 0.3)))])
    hidden = g.node("MatMul", [flat, g.const(ttq(rng, (20, 8 * 4 * 4), rng.uniform(0.2, 2, 20), 0.5).T.copy())])
    logits = g.node("MatMul", [g.node("Sign", [hidden]), g.const(ttq(rng, (10, 20), 0.75, 0.25).T.copy())])
    return g.model([out, z, logits])
