"""The binarized forms users' exporters produce, each fused and exact against ORT."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import binarize_ones_like, check, dorefa, inputs, qonnx_quant_reference
from onnx import helper
from onnx_builders import (
    GraphBuilder,
    dilated_conv_graph,
    grouped_conv_graph,
    pooled_threshold_graph,
    save,
    ternary_sign_graph,
)

from bnn_tvm.errors import BnnError
from bnn_tvm.compilation.inspection import inspect_onnx
from bnn_tvm.compilation.verify import verify


def binarize_less(g, x):
    lt = g.node("Less", [x, g.const(np.float32(0))])
    return g.node("Where", [lt, g.const(np.float32(-1)), g.const(np.float32(1))])


def binarize_cast(g, x, threshold=np.float32(0), compare="GreaterOrEqual"):
    ge = g.node(compare, [x, g.const(threshold)])
    doubled = g.node("Mul", [g.node("Cast", [ge], to=1), g.const(np.float32(2))])
    return g.node("Sub", [doubled, g.const(np.float32(1))])


@pytest.mark.parametrize("binarizer", [binarize_less, binarize_cast, binarize_ones_like])
def test_binarizer_idioms(tmp_path, binarizer):
    g = GraphBuilder([1, 10, 6, 6], seed=1)
    a = binarizer(g, "x")
    y = g.batch_norm(g.conv(a, g.binary_weight((12, 10, 3, 3)), pad=1), *g.random_bn(12, 0.3))
    out = g.conv(binarizer(g, y), g.binary_weight((5, 12, 3, 3)))
    x = inputs([1, 10, 6, 6])
    x[:, :, 0] = 0.0  # the idioms must agree with x >= 0 at exactly 0
    check(save(g.model([out]), tmp_path / "m.onnx"), x, ["binary_conv2d_threshold", "-> binary_conv2d"])


def strict_where(g, x):
    return g.binarize(x, strict=True)


def strict_less_equal(g, x):
    le = g.node("LessOrEqual", [x, g.const(np.float32(0))])
    return g.node("Where", [le, g.const(np.float32(-1)), g.const(np.float32(1))])


def strict_cast(g, x):
    doubled = g.node("Mul", [g.node("Cast", [g.node("Greater", [x, g.const(np.float32(0))])], to=1), g.const(np.float32(2))])
    return g.node("Sub", [doubled, g.const(np.float32(1))])


@pytest.mark.parametrize("binarizer", [strict_where, strict_less_equal, strict_cast])
def test_strict_binarizers_send_zero_to_minus_one(tmp_path, binarizer):
    """``torch.where(x > 0, 1., -1.)`` and its kin: 0 -> -1. On the input (exact zeros), after a
    conv + BN that reaches exactly 0 (mean an even integer, unit variance: then the threshold
    is ``d > mean``, not ``d >= mean``), and before a max pool: packed by ``x > 0``, folded into
    thresholds, exact against ORT. Treating them as ``x >= 0`` changes the answers."""
    g = GraphBuilder([1, 12, 6, 6], seed=2)
    bn = (np.ones(16, np.float32), np.zeros(16, np.float32), np.full(16, 2.0, np.float32), np.full(16, 1 - 1e-5, np.float32))
    y = g.batch_norm(g.conv(binarizer(g, "x"), g.binary_weight((16, 12, 3, 3)), pad=1), *bn)
    pooled = g.node("MaxPool", [binarizer(g, y)], kernel_shape=[2, 2], strides=[2, 2])
    out = g.conv(pooled, g.binary_weight((4, 16, 3, 3)))
    x = inputs([1, 12, 6, 6])
    x[:, :, ::2] = 0.0
    path = save(g.model([out]), tmp_path / "m.onnx")
    report = check(path, x, ["binarizer (x > 0)", "binary_conv2d_threshold", "max_pool_or", "-> binary_conv2d "])
    assert report.binary_checked == 2
    pattern = [r for r in inspect_onnx(path) if r.op_type in ("Greater", "LessOrEqual", "Cast", "Mul", "Sub", "Where")]
    assert pattern and all(r.binary for r in pattern), pattern  # every node of the binarizer, the cast form's too


def test_where_with_larger_constants_is_not_a_binarizer(tmp_path):
    """A full ±1 tensor that broadcasts the result to a larger shape is not the scalar: the
    Where must stay float (its output has the constants' shape)."""
    g = GraphBuilder([1, 4, 1, 5], seed=1)
    ge = g.node("GreaterOrEqual", ["x", g.const(np.float32(0))])
    out = g.node("Where", [ge, g.const(np.ones((1, 4, 3, 5), np.float32)), g.const(-np.ones((1, 4, 3, 5), np.float32))])
    out = g.conv(out, g.binary_weight((2, 4, 3, 3)))
    path = save(g.model([out]), tmp_path / "m.onnx")
    assert not any(r.binary for r in inspect_onnx(path))
    report = verify(path, "x86", x=inputs([1, 4, 1, 5]))
    assert report.ok, "\n".join(report.lines())


@pytest.mark.parametrize("order", ["sign_of_pad", "pad_of_sign"])
def test_zero_pad_around_a_sign_becomes_the_convs_padding(tmp_path, order):
    """``Sign(Pad(x, 0))`` and ``Pad(Sign(x), 0)`` (asymmetric) before a conv: the pad is the
    conv's zero padding of ``Sign(x)`` (Sign(0) = 0), so the conv is a ternary kernel (a padded
    tap is 0 in both planes), exact at x = 0."""
    g = GraphBuilder([1, 8, 6, 6], seed=24)
    pads = g.const(np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))
    if order == "sign_of_pad":
        data = g.node("Sign", [g.node("Pad", ["x", pads], mode="constant")])
    else:
        data = g.node("Pad", [g.node("Sign", ["x"]), pads], mode="constant")
    out = g.conv(data, g.binary_weight((5, 8, 3, 3)), pad=1)
    path = save(g.model([out]), tmp_path / "m.onnx")
    x = inputs([1, 8, 6, 6])
    x[:, :, :, ::2] = 0.0
    check(path, x, ["-> ternary_conv2d"])
    reports = inspect_onnx(path)
    assert all(r.binary for r in reports if r.op_type in ("Pad", "Sign", "Conv")), [(r.name, r.note) for r in reports]


@pytest.mark.parametrize("value", [1.0, -1.0])
def test_explicit_pad_before_conv(tmp_path, value):
    g = GraphBuilder([1, 37, 5, 5], seed=2)  # 37 channels: the +1 pad word must keep padding bits 0
    a = g.binarize("x")
    pads = g.const(np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))
    padded = g.node("Pad", [a, pads, g.const(np.float32(value))], mode="constant")
    y = g.batch_norm(g.conv(padded, g.binary_weight((9, 37, 3, 3))), *g.random_bn(9, 0.3))
    out = g.conv(g.binarize(y), g.binary_weight((4, 9, 1, 1)))
    report = check(save(g.model([out]), tmp_path / "m.onnx"), inputs([1, 37, 5, 5]), ["explicit Pad"])
    assert "binary_conv2d_threshold" in " ".join(report.fused)


def test_maxpool_on_packed_bits(tmp_path):
    g = GraphBuilder([1, 40, 8, 8], seed=3)
    y = g.batch_norm(g.conv(g.binarize("x"), g.binary_weight((33, 40, 3, 3)), pad=1), *g.random_bn(33))
    pooled = g.node("MaxPool", [g.binarize(y)], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    out = g.conv(pooled, g.binary_weight((6, 33, 3, 3)), pad=1)
    check(save(g.model([out]), tmp_path / "m.onnx"), inputs([1, 40, 8, 8]), ["max_pool_or", "binary_conv2d_threshold"])


def test_max_pool_between_conv_and_batch_norm(tmp_path):
    """XNOR-Net's block order, conv -> max pool -> BN -> hardtanh -> binarizer: the pool runs on
    thresholded bits (OR, or AND for channels with a negative gamma), the hardtanh is seen
    through, and every decision equals ONNX Runtime's, ties included."""
    path = save(pooled_threshold_graph(), tmp_path / "m.onnx")
    x = inputs([1, 24, 9, 9], batch=4)
    x[:, :, 0] = 0.0
    check(path, x, ["binary_conv2d_threshold", "max_pool_or"])
    binary = {r.op_type for r in inspect_onnx(path) if r.binary}
    assert {"MaxPool", "BatchNormalization", "Clip"} <= binary


def test_max_pool_after_a_decreasing_op_stays_float(tmp_path):
    """A negative per-channel scale before the pool: max and the scale do not commute."""
    g = GraphBuilder([1, 8, 6, 6], seed=12)
    y = g.conv(g.binarize("x"), g.binary_weight((6, 8, 3, 3)), pad=1)
    scaled = g.node("Mul", [y, g.const(np.array([1, -1, 2, -0.5, 1, 1], np.float32).reshape(1, 6, 1, 1))])
    pooled = g.node("MaxPool", [scaled], kernel_shape=[2, 2], strides=[2, 2])
    out = g.conv(g.binarize(pooled), g.binary_weight((3, 6, 3, 3)), pad=1)
    path = save(g.model([out]), tmp_path / "m.onnx")
    check(path, inputs([1, 8, 6, 6]), ["-> binary_conv2d"])
    notes = {r.op_type: r.note for r in inspect_onnx(path)}
    assert "can decrease" in notes["MaxPool"]


def test_relu_and_clip_in_float_epilogues(tmp_path):
    """A float conv -> hardtanh (the stem) and a binary conv -> BN -> ReLU ending in the output
    run those clamps in the kernels' epilogues, exactly."""
    g = GraphBuilder([1, 3, 7, 7], seed=13)
    stem = g.conv("x", g.rng.standard_normal((16, 3, 3, 3)).astype(np.float32), pad=1)
    clipped = g.node("Clip", [stem, g.const(np.float32(-1)), g.const(np.float32(1))])
    y = g.batch_norm(g.conv(g.binarize(clipped), g.binary_weight((10, 16, 3, 3)), pad=1), *g.random_bn(10, 0.3))
    out = g.node("Relu", [y])
    report = check(save(g.model([out]), tmp_path / "m.onnx"), inputs([1, 3, 7, 7]), ["binary_conv2d_epilogue"])
    fused = " | ".join(report.fused)
    assert "binary_conv2d + 3 float op(s) in its epilogue" in fused  # BN (2) and the ReLU
    assert "float conv + 2 float op(s) in its epilogue" in fused  # the clip's two bounds


def test_prelu_in_thresholds_and_epilogues(tmp_path):
    """BN -> PReLU (per-channel slopes: positive, zero and negative, as training leaves them)
    before a binarizer folds into thresholds, also with a max pool before the BN; a PReLU
    after the float stem or ending in the float output runs in the kernel's epilogue; all exact
    against ONNX Runtime."""
    g = GraphBuilder([1, 16, 9, 9], seed=15)

    def prelu(x, channels, signs=True):
        slope = g.rng.uniform(0.05, 0.5, channels).astype(np.float32)
        if signs:
            slope[::3] *= -1
            slope[1::5] = 0
        return g.node("PRelu", [x, g.const(slope.reshape(channels, 1, 1), "slope")])

    stem = g.conv("x", g.rng.standard_normal((16, 16, 3, 3)).astype(np.float32), pad=1)
    stem = prelu(g.batch_norm(stem, *g.random_bn(16, 0.3)), 16)
    first = g.conv(g.binarize(stem), g.binary_weight((24, 16, 3, 3)), pad=1)
    act = prelu(g.batch_norm(first, *g.random_bn(24, 0.3)), 24)
    pooled = g.node("MaxPool", [g.conv(g.binarize(act), g.binary_weight((20, 24, 3, 3)), pad=1)],
                    kernel_shape=[2, 2], strides=[2, 2])
    act2 = prelu(g.batch_norm(pooled, *g.random_bn(20)), 20, signs=False)
    last = g.conv(g.binarize(act2), g.binary_weight((12, 20, 3, 3)), pad=1)
    out = prelu(g.batch_norm(last, *g.random_bn(12, 0.3)), 12)
    report = check(save(g.model([out]), tmp_path / "m.onnx"), inputs([1, 16, 9, 9], batch=2),
                   ["binary_conv2d_threshold", "binary_conv2d_epilogue"])
    fused = " | ".join(report.fused)
    assert fused.count("binary_conv2d + 3 float op(s) + binarizer") == 2, fused  # BN (2) and the PReLU
    assert "OR" in fused.upper() and "binary_conv2d + 3 float op(s) in its epilogue" in fused, fused
    assert "float conv + 3 float op(s) in its epilogue" in fused, fused


def test_one_dimensional_binary_convs(tmp_path):
    """Conv1d layers (keyword spotting, ECG): a float conv1d stem, a binary conv1d with stride 2
    and asymmetric pads whose BN + hardtanh fold into thresholds, a dilated binary conv1d whose
    BN ends in the float output; all on a one-row 2-D view, exact."""
    g = GraphBuilder([1, 6, 37], seed=14)
    stem = g.node("Conv", ["x", g.const(g.rng.standard_normal((20, 6, 3)).astype(np.float32), "w")],
                  kernel_shape=[3], pads=[1, 1])
    first = g.node("Conv", [g.binarize(stem), g.const(g.binary_weight((33, 20, 5)), "w")],
                   kernel_shape=[5], strides=[2], pads=[2, 1])
    clipped = g.node("Clip", [g.batch_norm(first, *g.random_bn(33, 0.3)), g.const(np.float32(-1)), g.const(np.float32(1))])
    second = g.node("Conv", [g.binarize(clipped), g.const(g.binary_weight((8, 33, 3)), "w")],
                    kernel_shape=[3], dilations=[2], pads=[2, 2])
    out = g.batch_norm(second, *g.random_bn(8, 0.3))
    path = save(g.model([out]), tmp_path / "m.onnx")
    x = inputs([1, 6, 37], batch=2)
    check(path, x, ["binary_conv2d_threshold", "binary_conv2d_epilogue"])
    reports = {r.name: r for r in inspect_onnx(path)}
    convs = [r for r in reports.values() if r.op_type == "Conv"]
    assert [r.binary for r in convs] == [False, True, True]
    assert "one row" in convs[0].note


def test_one_dimensional_conv_then_flatten_and_binary_dense(tmp_path):
    """A keyword-spotting head: binary conv1d -> BN -> Flatten -> binarizer -> binary dense. The
    binarizer is moved before the flatten (it commutes), so the BN folds into the conv's
    thresholds as for a 2-D conv, and the dense reads the packed bits; exact."""
    g = GraphBuilder([1, 16, 40], seed=3)
    conv = g.node("Conv", [g.binarize("x"), g.const(g.binary_weight((24, 16, 3)), "w")], kernel_shape=[3],
                  strides=[2], pads=[1, 1])
    flat = g.node("Flatten", [g.batch_norm(conv, *g.random_bn(24, 0.3))])
    out = g.node("Gemm", [g.binarize(flat), g.const(g.binary_weight((10, 24 * 20)), "w")], transB=1)
    report = check(save(g.model([out]), tmp_path / "m.onnx"), inputs([1, 16, 40]), ["binary_conv2d_threshold", "-> binary_dense"])
    assert report.max_abs_diff == 0


def test_residual_shortcut_bireal_style(tmp_path):
    """x -> binarize -> binary conv -> BN -> + x (real-valued shortcut) -> binarize -> conv."""
    g = GraphBuilder([1, 16, 6, 6], seed=4)
    y = g.batch_norm(g.conv(g.binarize("x"), g.binary_weight((16, 16, 3, 3)), pad=1), *g.random_bn(16))
    summed = g.node("Add", [y, "x"])
    y2 = g.batch_norm(g.conv(g.binarize(summed), g.binary_weight((16, 16, 3, 3)), pad=1), *g.random_bn(16))
    out = g.node("Add", [y2, summed])
    report = check(save(g.model([out]), tmp_path / "m.onnx"), inputs([1, 16, 6, 6]), ["-> binary_conv2d"])
    assert sum("-> binary_conv2d " in f for f in report.fused) == 2


@pytest.mark.parametrize("residual", [False, True])
def test_tensor_binarized_by_two_layers_is_computed_once(tmp_path, residual):
    """Larq-style layers carry their own input quantizer: two convs reading one tensor give two
    identical binarizers in the graph. Their bits are computed once (by the threshold kernel
    both binarizers fold into, or by one pack of the real-valued residual sum), and both convs
    stay exact."""
    from bnn_tvm.compilation.compiler import lower_onnx

    g = GraphBuilder([1, 16, 6, 6], seed=4)
    y = g.batch_norm(g.conv(g.binarize("x"), g.binary_weight((16, 16, 3, 3)), pad=1), *g.random_bn(16))
    if residual:
        y = g.node("Add", [y, "x"])
    left = g.conv(g.binarize(y), g.binary_weight((8, 16, 3, 3)), pad=1)
    right = g.conv(g.binarize(y), g.binary_weight((8, 16, 1, 1)))
    out = g.node("Concat", [left, right], axis=1)
    path = save(g.model([out]), tmp_path / "m.onnx")
    check(path, inputs([1, 16, 6, 6]), ["-> binary_conv2d"])
    calls = [line.split("R.call_tir(")[1].split(",")[0] for line in str(lower_onnx(path).mod["main"]).splitlines()
             if "R.call_tir(" in line]
    # the input's pack, the first conv (with the threshold, or the residual's epilogue), y's
    # pack (residual), the two convs
    assert len(calls) == 4 + residual, calls


def test_sign_after_binary_conv_is_proven_binary(tmp_path):
    """BN with a half-integer shift never hits 0 on integers: Sign equals the binarizer there."""
    g = GraphBuilder([1, 8, 5, 5], seed=5)
    bn = (np.ones(6, np.float32), np.full(6, 0.5, np.float32), np.zeros(6, np.float32), np.full(6, 1 - 1e-5, np.float32))
    y = g.batch_norm(g.conv(g.binarize("x"), g.binary_weight((6, 8, 3, 3)), pad=1), *bn)
    out = g.conv(g.node("Sign", [y]), g.binary_weight((3, 6, 3, 3)), pad=1)
    path = save(g.model([out]), tmp_path / "m.onnx")
    check(path, inputs([1, 8, 5, 5]), ["binary_conv2d_threshold"])


def test_sign_that_can_be_zero_runs_as_ternary_kernels(tmp_path):
    """``Sign(x)`` with exact zeros (in the input, and in integer conv sums without BN) feeds a
    scaled conv, a grouped conv and a dense: the conv and the dense run as ternary kernels (sign
    and nonzero planes), the grouped conv as an XNOR-popcount kernel over the two halves
    ``b(x), b(-x)``; all exact against ORT. Binarizing a 0 to ±1 in either half (``x < 0``
    for the second) or pairing the halves across groups changes the outputs."""
    x = inputs([1, 21, 7, 7])
    x[:, :, ::3] = 0.0
    path = save(ternary_sign_graph(), tmp_path / "m.onnx")
    report = verify(path, "x86", x=x)
    assert report.ok, "\n".join(report.lines())
    fused = " | ".join(report.fused)
    assert fused.count("-> pack_ternary") == 2 and fused.count("-> pack_sign_pair") == 1, fused
    assert fused.count("-> ternary_conv2d [") == 1 and fused.count("-> binary_conv2d [") == 1, fused
    # the halves' 1/2 in the grouped conv: split over its groups' concat
    assert fused.count("-> binary_conv2d_epilogue") == 2, fused
    assert "-> ternary_dense" in fused, fused
    notes = {r.name: r for r in inspect_onnx(path)}
    assert all(r.binary for r in notes.values() if r.op_type in ("Sign", "Conv", "Gemm")), notes


def binarynet_graph():
    """BinaryNet's PyTorch layers (``torch.sign`` on activations): Sign -> conv -> MaxPool ->
    BN -> Hardtanh -> Sign -> conv -> BN -> Hardtanh -> Sign -> Flatten -> MatMul -> BN ->
    Hardtanh -> Sign -> MatMul. Input ``[N, 16, 8, 8]``."""
    g = GraphBuilder([1, 16, 8, 8], seed=11)

    def hardtanh(t):
        return g.node("Clip", [t, g.const(np.float32(-1)), g.const(np.float32(1))])

    y = g.conv(g.node("Sign", ["x"]), g.binary_weight((32, 16, 3, 3)), pad=1)
    y = hardtanh(g.batch_norm(g.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2]), *g.random_bn(32, 0.3)))
    y = hardtanh(g.batch_norm(g.conv(g.node("Sign", [y]), g.binary_weight((32, 32, 3, 3)), pad=1), *g.random_bn(32, 0.3)))
    flat = g.node("Flatten", [g.node("Sign", [y])])
    y = g.node("MatMul", [flat, g.const(g.binary_weight((32 * 4 * 4, 40)))])
    y = hardtanh(g.batch_norm(y, *g.random_bn(40, 0.3)))
    return g.model([g.node("MatMul", [g.node("Sign", [y]), g.const(g.binary_weight((40, 10)))])])


def test_binarynet_sign_chain_runs_at_the_plain_binary_cost(tmp_path):
    """Only the first ``Sign`` (on the float input, where 0 occurs) needs a ternary kernel. Each later one reads BN + Hardtanh of a binary layer's integer result (across a
    max pool, or a flatten), which never maps to 0 here: it is proven binary once that layer is
    a kernel, a round later, and folds into its thresholds; the next layer runs on C channels,
    not 2C."""
    x = inputs([1, 16, 8, 8])
    x[:, :, ::3] = 0.0
    report = verify(save(binarynet_graph(), tmp_path / "m.onnx"), "x86", x=x)
    assert report.ok, "\n".join(report.lines())
    fused = " | ".join(report.fused)
    assert fused.count("-> pack_ternary") == 1, fused
    # the first conv, ternary, folds its BN + Hardtanh + Sign across the max pool as the second does
    assert fused.count("-> ternary_conv2d_threshold") == 1 and fused.count("-> binary_conv2d_threshold") == 1, fused
    assert fused.count("-> binary_dense_threshold") == 1, fused
    assert "conv2d 32x32x3x3" in fused and "dense 512->40" in fused, fused  # C channels, not 2C
    assert not [line for line in report.fused if line.endswith("[]")], fused  # each credited to its ONNX node
    assert report.binary_checked == 4  # the three proven Signs and the split one, compared with ORT's


def test_sign_after_a_layer_that_stays_float_still_runs_as_ternary(tmp_path):
    """A conv on binarized bits with float weights looks like a layer about to become a binary
    kernel, so the ``Sign`` after it waits; the conv stays float, and once nothing else changes
    the waiting ``Sign`` becomes ternary planes like any other."""
    g = GraphBuilder([1, 16, 8, 8], seed=12)
    float_weights = g.rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    y = g.batch_norm(g.conv(g.binarize("x"), float_weights, pad=1), *g.random_bn(32, 0.3))
    out = g.conv(g.node("Sign", [y]), g.binary_weight((8, 32, 3, 3)), pad=1)
    report = check(save(g.model([out]), tmp_path / "m.onnx"), inputs([1, 16, 8, 8]), ["-> pack_ternary"])
    assert "conv2d 8x32x3x3" in " | ".join(report.fused)


def test_power_of_two_weight_scales_folded_into_weights(tmp_path):
    g = GraphBuilder([1, 12, 6, 6], seed=7)
    alpha = (2.0 ** np.arange(-3, 5)).astype(np.float32)  # IR-Net style per-channel 2^k
    w = g.binary_weight((8, 12, 3, 3)) * alpha[:, None, None, None]
    y = g.batch_norm(g.conv(g.binarize("x"), w, pad=1), *g.random_bn(8, 0.3))
    out = g.conv(g.binarize(y), g.binary_weight((4, 8, 3, 3)))
    check(save(g.model([out]), tmp_path / "m.onnx"), inputs([1, 12, 6, 6]), ["binary_conv2d_threshold"])


def test_xnor_net_scale_as_separate_mul_and_arbitrary_scale_in_weights(tmp_path):
    g = GraphBuilder([1, 12, 6, 6], seed=8)
    alpha = g.rng.uniform(0.1, 2.0, (1, 8, 1, 1)).astype(np.float32)
    conv = g.conv(g.binarize("x"), g.binary_weight((8, 12, 3, 3)), pad=1)
    scaled = g.node("Mul", [conv, g.const(alpha)])
    b = g.binarize(g.batch_norm(scaled, *g.random_bn(8, 0.3)))
    folded_weights = g.binary_weight((5, 8, 3, 3)) * g.rng.uniform(0.1, 2, (5, 1, 1, 1)).astype(np.float32)
    out = g.conv(b, folded_weights)  # float output: equal within float rounding
    report = check(save(g.model([out]), tmp_path / "m.onnx"), inputs([1, 12, 6, 6]), ["binary_conv2d_threshold"])
    assert sum("-> binary_conv2d " in f for f in report.fused) == 2


def ulp_off(weights: np.ndarray, fraction: float, rng) -> np.ndarray:
    """``weights`` with a ``fraction`` of entries one float32 ulp off, up or down: what folding
    ``alpha * sign(W) - clip(W) + clip(W)`` in float32 leaves."""
    off = weights.copy()
    picked = rng.random(weights.shape) < fraction
    toward = np.where(rng.random(weights.shape) < 0.5, np.float32(np.inf), np.float32(0))
    off[picked] = np.nextafter(weights[picked], toward[picked])
    return off


def test_weights_an_ulp_off_a_scale_run_binary(tmp_path):
    """Weights ±alpha per channel with 3 % of them an ulp off: binary kernels whose thresholds
    widen their rounding band by the weights' deviation; exact against ORT (the float graph
    convolves the ulp-off weights), also where a tie-prone BN puts thresholds near sums."""
    g = GraphBuilder([1, 16, 6, 6], seed=21)
    alpha = g.rng.uniform(0.05, 2, (24, 1, 1, 1)).astype(np.float32)
    first = ulp_off(g.binary_weight((24, 16, 3, 3)) * alpha, 0.03, g.rng)
    assert not np.all(np.abs(first) == np.abs(first).reshape(24, -1)[:, :1, None, None])  # really off
    y = g.batch_norm(g.conv(g.binarize("x"), first, pad=1), *g.random_bn(24, 0.3))
    second = ulp_off(g.binary_weight((8, 24, 3, 3)) * np.float32(0.3), 0.03, g.rng)
    out = g.conv(g.binarize(y), second, pad=1)
    path = save(g.model([out]), tmp_path / "m.onnx")
    report = check(path, inputs([1, 16, 6, 6], batch=8), ["-> binary_conv2d_threshold", "-> binary_conv2d "])
    assert report.binary_checked == 2


def test_threshold_within_the_deviation_of_ulp_off_weights_is_not_folded(tmp_path):
    """alpha = 0.5 multiplies exactly, so only the weights' deviation separates the float conv's
    sum from 0.5 * d: a batch norm whose threshold sits exactly at 0.5 * 8 is not folded."""
    g = GraphBuilder([1, 8, 5, 5], seed=23)
    cout = 4
    weights = ulp_off(g.binary_weight((cout, 8, 3, 3)) * np.float32(0.5), 0.2, g.rng)
    bn = (np.ones(cout, np.float32), np.zeros(cout, np.float32), np.full(cout, 4.0, np.float32),
          np.full(cout, 1 - 1e-5, np.float32))
    y = g.batch_norm(g.conv(g.binarize("x"), weights, pad=1), *bn)
    out = g.conv(g.binarize(y), g.binary_weight((3, cout, 1, 1)))
    reports = inspect_onnx(save(g.model([out]), tmp_path / "m.onnx"))
    assert "threshold" not in " ".join(str(r.kernel) for r in reports)
    assert next(r for r in reports if r.op_type == "Conv").binary


def test_weights_with_exact_zeros_run_as_ternary_weights(tmp_path):
    """``sign(W)`` of a latent weight that is exactly 0: the conv runs binary with a nonzero
    plane for its weights, exact at the border (the zero weight's padded taps add nothing)."""
    g = GraphBuilder([1, 8, 5, 5], seed=22)
    weights = g.binary_weight((4, 8, 3, 3)) * np.float32(0.5)
    weights[1, 2, 0, 0] = 0.0  # sign(0) of a latent weight
    out = g.conv(g.binarize("x"), weights, pad=1)
    path = save(g.model([out]), tmp_path / "m.onnx")
    conv = next(r for r in inspect_onnx(path) if r.op_type == "Conv")
    assert conv.binary and "ternary weights" in conv.note, conv.note
    check(path, inputs([3, 8, 5, 5]), ["-> binary_conv2d"])


def test_weights_neither_binary_nor_ternary_stay_float_and_say_so(tmp_path):
    g = GraphBuilder([1, 8, 5, 5], seed=22)
    weights = g.binary_weight((4, 8, 3, 3)) * np.float32(0.5)
    weights[1, 2, 0, 0] = 0.25
    out = g.conv(g.binarize("x"), weights, pad=1)
    conv = next(r for r in inspect_onnx(save(g.model([out]), tmp_path / "m.onnx")) if r.op_type == "Conv")
    assert not conv.binary and "not ternary (±alpha or 0 per output channel)" in conv.note, conv.note


def test_threshold_within_rounding_of_a_scaled_sum_stays_float(tmp_path):
    """Weights ±0.1 (Brevitas' default): the float conv's sum of ±0.1 terms may round either
    side of a threshold placed exactly at 0.1 * d, so folding it could change an answer."""
    g = GraphBuilder([1, 8, 5, 5], seed=12)
    cout = 4
    mean = np.float32(0.1) * np.float32(8)  # a value the conv can produce: d = 8
    bn = (np.ones(cout, np.float32), np.zeros(cout, np.float32), np.full(cout, mean, np.float32), np.full(cout, 1 - 1e-5, np.float32))
    y = g.batch_norm(g.conv(g.binarize("x"), g.binary_weight((cout, 8, 3, 3)) * np.float32(0.1), pad=1), *bn)
    out = g.conv(g.binarize(y), g.binary_weight((3, cout, 1, 1)))
    path = save(g.model([out]), tmp_path / "m.onnx")
    reports = inspect_onnx(path)
    bn_node = next(r for r in reports if r.op_type == "BatchNormalization")
    # no threshold: the batch norm is computed in float, in the conv's epilogue, and binarized
    assert bn_node.kernel == "binary_conv2d_epilogue", bn_node
    assert next(r for r in reports if r.op_type == "Conv").kernel == "binary_conv2d_epilogue"
    assert "threshold" not in " ".join(str(r.kernel) for r in reports)


def test_threshold_near_an_unreachable_sum_folds(tmp_path):
    """The same Brevitas-style ±0.1 weights, with the threshold at 0.1 * 9: over 8 input
    channels and zero padding every sum is even, so 9 is never reached, the nearest sums (8 and
    10) are far outside the rounding band, and the BN folds into thresholds, exactly."""
    g = GraphBuilder([1, 8, 5, 5], seed=12)
    cout = 4
    mean = np.float32(0.1) * np.float32(9)
    bn = (np.ones(cout, np.float32), np.zeros(cout, np.float32), np.full(cout, mean, np.float32), np.full(cout, 1 - 1e-5, np.float32))
    y = g.batch_norm(g.conv(g.binarize("x"), g.binary_weight((cout, 8, 3, 3)) * np.float32(0.1), pad=1), *bn)
    out = g.conv(g.binarize(y), g.binary_weight((3, cout, 1, 1)))
    check(save(g.model([out]), tmp_path / "m.onnx"), inputs([1, 8, 5, 5]), ["binary_conv2d_threshold"])


@pytest.mark.parametrize("kernel,pad", [(1, 0), (5, 2)])
def test_kernel_sizes(tmp_path, kernel, pad):
    g = GraphBuilder([1, 20, 7, 7], seed=kernel)
    y = g.batch_norm(g.conv(g.binarize("x"), g.binary_weight((21, 20, kernel, kernel)), pad=pad), *g.random_bn(21))
    out = g.conv(g.binarize(y), g.binary_weight((3, 21, 1, 1)))
    check(save(g.model([out]), tmp_path / "m.onnx"), inputs([1, 20, 7, 7]), ["binary_conv2d_threshold"])


def test_dilated_binary_convs(tmp_path):
    path = save(dilated_conv_graph(), tmp_path / "m.onnx")
    report = check(path, inputs([1, 32, 9, 9]), ["binary_conv2d_threshold", "dilation (2, 2)", "dilation (2, 1)"])
    assert report.binary_checked == 2


def test_grouped_binary_convs(tmp_path):
    """Groups of 32, 16 and 21 channels run as one binary conv per group (exact, explicit +1 pad
    and weight scales included); 4 channels per group stay float, and inspect says why."""
    path = save(grouped_conv_graph(), tmp_path / "m.onnx")
    report = check(path, inputs([1, 64, 7, 7], batch=2), ["groups 2: one binary conv per group", "groups 3"])
    assert report.binary_checked == 4
    convs = [r for r in inspect_onnx(path) if r.op_type == "Conv"]
    assert [r.binary for r in convs] == [True, True, True, False]
    assert "4 input channels per group" in convs[3].note


def test_gemm_with_transposed_binary_weights_and_bias(tmp_path):
    g = GraphBuilder([1, 70], seed=9)
    g.input = helper.make_tensor_value_info("x", 1, ["N", 70])
    h = g.node("Gemm", [g.binarize("x"), g.const(g.binary_weight((50, 70))), g.const(g.rng.standard_normal(50).astype(np.float32))], transB=1)
    out = g.node("Gemm", [g.binarize(h), g.const(g.binary_weight((50, 10)))])
    report = check(save(g.model([out]), tmp_path / "m.onnx"), inputs([1, 70]), ["binary_dense_threshold", "-> binary_dense"])
    assert report.max_abs_diff == 0.0


@pytest.mark.parametrize("binarizer", ["where", "cast", "strict"])
def test_binary_matmul_on_tokens(tmp_path, binarizer):
    """Transformer-style ``x[N, T, C] @ W[C, O]`` on binarized tokens (features on the last axis),
    a scale and bias, then another: each matmul is a binary dense over the N * T rows, exact
    (a 3-D tensor would otherwise be packed as NCW, along T), and the ops between them move
    onto the rows, where they fold into the first dense's thresholds."""
    g = GraphBuilder([1, 7, 48], seed=11)
    g.input = helper.make_tensor_value_info("x", 1, ["N", 7, 48])
    bits = {"where": g.binarize, "cast": lambda t: binarize_cast(g, t), "strict": lambda t: strict_where(g, t)}[binarizer]
    h = g.node("MatMul", [bits("x"), g.const(g.binary_weight((48, 40)), "w")])
    h = g.node("Add", [g.node("Mul", [h, g.const(np.float32(0.25))]), g.const(g.rng.standard_normal(40).astype(np.float32))])
    out = g.node("MatMul", [bits(h), g.const(g.binary_weight((40, 12)), "w")])
    path = save(g.model([out, h]), tmp_path / "m.onnx")
    x = inputs([1, 7, 48])
    x[:, ::2, ::3] = 0.0  # the strict binarizer sends them to -1
    report = check(path, x, ["-> tokens_as_rows", "-> binary_dense"])
    assert report.max_abs_diff == 0.0
    assert sum("-> binary_dense " in line for line in report.fused) == 2, report.fused
    # the scale and bias after the first dense and the binarizer fold into its thresholds
    assert "binary_dense + 2 float op(s) + binarizer -> binary_dense_threshold" in " | ".join(report.fused)
    notes = [r for r in inspect_onnx(path) if r.op_type in ("MatMul", "Mul", "Add")]
    assert len(notes) >= 4 and all(r.binary for r in notes), notes  # the cast form adds a Mul and a Sub


@pytest.mark.parametrize("compare", ["GreaterOrEqual", "Greater"])
@pytest.mark.parametrize("form", ["where", "cast"])
def test_rsign_on_the_token_input_lifts(tmp_path, compare, form):
    """ReActNet's RSign, ``Where(x >= beta, 1, -1)`` (or ``Cast(x >= beta) * 2 - 1``) with
    ``beta`` per feature, directly on a ``[N, T, C]`` graph input: the matmul after it is a
    binary dense over the rows (it stayed float: a 3-D tensor's per-channel constants were
    looked for along axis 1). Inputs exactly at ``beta`` check the tie (``>=`` sends it to +1,
    ``>`` to -1)."""
    g = GraphBuilder([1, 8, 40], seed=12)
    beta = (g.rng.standard_normal((1, 1, 40)) * 0.3).astype(np.float32)
    if form == "where":
        bits = g.node("Where", [g.node(compare, ["x", g.const(beta)]), g.const(np.float32(1)), g.const(np.float32(-1))])
    else:
        bits = binarize_cast(g, "x", beta, compare)
    out = g.node("MatMul", [bits, g.const(g.binary_weight((40, 10)), "w")])
    path = save(g.model([out]), tmp_path / "m.onnx")
    x = inputs([1, 8, 40], batch=2)
    x[:, ::2, :] = beta[0]
    report = check(path, x, ["-> tokens_as_rows", "-> binary_dense"])
    assert report.max_abs_diff == 0.0 and report.binary_checked == 1
    assert all(r.binary for r in inspect_onnx(path)), inspect_onnx(path)


def test_binarizer_feeding_a_non_binary_op_stays_exact(tmp_path):
    g = GraphBuilder([1, 6, 4, 4], seed=10)
    b = g.binarize("x")
    out = g.node("Relu", [g.node("Mul", [b, g.const(np.float32(0.5))])])
    check(save(g.model([out, b]), tmp_path / "m.onnx"), inputs([1, 6, 4, 4]), [])


def test_missing_initializer_names_the_node(tmp_path):
    g = GraphBuilder([1, 6, 4, 4])
    b = g.binarize("x")
    g.nodes.append(helper.make_node("Conv", [b, "weights_that_are_not_there"], ["y"], name="conv_without_weights"))
    path = save(g.model(["y"]), tmp_path / "m.onnx")
    with pytest.raises(BnnError, match="conv_without_weights.*weights_that_are_not_there"):
        inspect_onnx(path)


def test_qonnx_bipolar_quant_by_hand(tmp_path):
    """QONNX BipolarQuant on activations (scale 1) and on float weights (power-of-two scale)."""
    g = GraphBuilder([1, 9, 6, 6], seed=11)
    domain = "qonnx.custom_op.general"

    def bipolar(x, scale):
        out = g.name("bq")
        g.nodes.append(helper.make_node("BipolarQuant", [x, g.const(np.float32(scale))], [out], name=f"node_{out}", domain=domain))
        return out

    w = bipolar(g.const(g.rng.standard_normal((14, 9, 3, 3)).astype(np.float32), "latent"), 0.5)
    conv = g.node("Conv", [bipolar("x", 1.0), w], pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    y = g.batch_norm(conv, *g.random_bn(14, 0.3))
    w2 = bipolar(g.const(g.rng.standard_normal((3, 14, 3, 3)).astype(np.float32), "latent"), 1.0)
    out = g.node("Conv", [bipolar(y, 1.0), w2], kernel_shape=[3, 3])
    model = g.model([out])
    model.opset_import.append(helper.make_opsetid(domain, 1))
    check(save(model, tmp_path / "m.onnx"), inputs([1, 9, 6, 6]), ["binary_conv2d_threshold", "-> binary_conv2d"])


def brevitas_binary_net(input_quant: str, channels: int):
    """Brevitas layers: ``input_quant`` on the input, binary conv, batch norm (random statistics),
    binary activation, binary conv; exported by its QONNX exporter."""
    import brevitas.nn as qnn
    import brevitas.quant as quant
    import torch

    binary = dict(weight_quant=quant.SignedBinaryWeightPerTensorConst, bias=False)
    model = torch.nn.Sequential(
        qnn.QuantIdentity(act_quant=getattr(quant, input_quant), return_quant_tensor=True),
        qnn.QuantConv2d(channels, 16, 3, padding=1, **binary),
        torch.nn.BatchNorm2d(16),
        qnn.QuantIdentity(act_quant=quant.SignedBinaryActPerTensorConst, return_quant_tensor=True),
        qnn.QuantConv2d(16, 4, 3, stride=2, **binary),
    ).eval()
    with torch.no_grad():
        bn = model[2]
        bn.running_mean.uniform_(-3, 3), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(-1, 1)
    return model


def export_brevitas(model, channels: int, path) -> str:
    import torch
    from brevitas.export import export_qonnx

    export_qonnx(model, torch.randn(1, channels, 6, 6), str(path))
    return str(path)


def test_brevitas_qonnx_export(tmp_path):
    """A binarized model built with Brevitas and exported by its QONNX exporter."""
    path = export_brevitas(brevitas_binary_net("SignedBinaryActPerTensorConst", 8), 8, tmp_path / "brevitas.onnx")
    report = check(path, inputs([1, 8, 6, 6]), ["binary_conv2d_threshold", "-> binary_conv2d"])
    assert report.binary_checked == 2


@pytest.mark.parametrize("bits,max_min", [(2, False), (2, True), (3, False)])
def test_dorefa_bit_planes_with_binary_weights(tmp_path, bits, max_min):
    g = GraphBuilder([1, 10, 6, 6], seed=20 + bits)
    a = dorefa(g, "x", bits, max_min)
    y = g.batch_norm(g.conv(a, g.binary_weight((12, 10, 3, 3)), pad=1), *g.random_bn(12, 0.3))
    b = g.binarize(y)
    out = g.conv(dorefa(g, g.conv(b, g.binary_weight((6, 12, 3, 3)), pad=1), bits), g.binary_weight((3, 6, 1, 1)))
    x = (inputs([1, 10, 6, 6]) * 0.6 + 0.5).astype(np.float32)
    report = check(save(g.model([out, a]), tmp_path / "m.onnx"), x, ["pack_levels", "multibit_conv2d_threshold"])
    assert report.binary_checked >= 3  # two k-bit activations and one binary one, compared exactly


def test_dynamic_spatial_shape_is_refused_with_the_input_named(tmp_path):
    g = GraphBuilder([1, 4, 5, 5])
    g.input = helper.make_tensor_value_info("x", 1, ["N", 4, "height", 5])
    out = g.conv(g.binarize("x"), g.binary_weight((2, 4, 3, 3)))
    path = save(g.model([out]), tmp_path / "dyn.onnx")
    with pytest.raises(BnnError, match=r"dyn.onnx.*'x'.*symbolic dimension at axis 2"):
        inspect_onnx(path)


def test_rsign_per_channel_threshold(tmp_path):
    """ReActNet's RSign: Where(x >= beta, 1, -1), beta per channel; ties x == beta give +1."""
    g = GraphBuilder([1, 10, 6, 6], seed=30)

    def rsign(x, channels):
        beta = g.rng.uniform(-0.5, 0.5, (1, channels, 1, 1)).astype(np.float32)
        ge = g.node("GreaterOrEqual", [x, g.const(beta)])
        return g.node("Where", [ge, g.const(np.float32(1)), g.const(np.float32(-1))]), beta

    a, beta = rsign("x", 10)
    y = g.batch_norm(g.conv(a, g.binary_weight((12, 10, 3, 3)), pad=1), *g.random_bn(12, 0.3))
    b, _ = rsign(y, 12)
    out = g.conv(b, g.binary_weight((3, 12, 3, 3)))
    x = inputs([1, 10, 6, 6], seed=31)
    x[:, :, ::2] = np.broadcast_to(beta, x[:, :, ::2].shape[:2] + (1, 1))  # exact ties
    check(save(g.model([out]), tmp_path / "m.onnx"), x, ["binary_conv2d_threshold", "-> binary_conv2d"])


def test_weights_stored_beside_the_model(tmp_path):
    """PyTorch's exporter writes the weights to ``model.onnx.data``: they are read from there,
    and a missing data file is an error naming it."""
    import onnx

    g = GraphBuilder([1, 8, 6, 6], seed=7)
    out = g.conv(g.binarize("x"), g.binary_weight((16, 8, 3, 3)), pad=1)
    path = str(tmp_path / "m.onnx")
    onnx.save(g.model([out]), path, save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    check(path, inputs([1, 8, 6, 6]), ["-> binary_conv2d"])
    (tmp_path / "m.onnx.data").unlink()
    with pytest.raises(BnnError, match=r"m\.onnx\.data"):
        inspect_onnx(path)


def test_torchscript_pad_arithmetic_is_folded(tmp_path):
    """PyTorch's TorchScript exporter writes ``F.pad``'s pads as ``ConstantOfShape -> Concat ->
    Reshape -> Slice -> Transpose -> Reshape -> Cast``; TVM's importer refuses them ("dynamic
    pads") unless they are folded to a constant first. The +1 pad then feeds a binary conv."""
    import torch
    import torch.nn.functional as F

    class PaddedBinaryConv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.sign(torch.randn(8, 6, 2, 2)))

        def forward(self, x):
            bits = torch.where(x >= 0, 1.0, -1.0)
            return F.conv2d(F.pad(bits, (0, 1, 0, 1), value=1.0), self.weight, stride=2)

    torch.manual_seed(0)
    path = tmp_path / "m.onnx"
    torch.onnx.export(PaddedBinaryConv().eval(), (torch.randn(1, 6, 7, 7),), str(path), dynamo=False,
                      opset_version=17, input_names=["x"], dynamic_axes={"x": {0: "N"}})
    assert {"ConstantOfShape", "Slice", "Transpose"} <= {n.op_type for n in onnx.load(path).graph.node}
    check(path, inputs([1, 6, 7, 7]), ["(explicit Pad +1)"])


def test_per_channel_of_an_output_without_channels():
    """A scalar or 1-D float op (a weight's or a shape's arithmetic) has no channel axis."""
    from bnn_tvm.relay_passes.analysis.chain import per_channel

    assert per_channel(np.float32(2), ()) is None
    assert per_channel(np.ones(3, np.float32), (3,)) is None
    np.testing.assert_array_equal(per_channel(np.arange(3, dtype=np.float32).reshape(3, 1, 1), (1, 3, 4, 4)), [0, 1, 2])


def test_clipped_straight_through_estimator_is_a_sign(tmp_path):
    """``c + (Sign(c) - c)`` with ``c = Clip(x, -1, 1)`` equals ``Sign(c)`` in float32 (|c| <= 1 with
    the sign of c): the conv on it is a ternary kernel (the Sign can be 0), exact at x = 0."""
    g = GraphBuilder([1, 8, 5, 5], seed=9)
    clipped = g.node("Clip", ["x", g.const(np.float32(-1)), g.const(np.float32(1))])
    estimator = g.node("Add", [clipped, g.node("Sub", [g.node("Sign", [clipped]), clipped])])
    out = g.conv(estimator, g.binary_weight((4, 8, 3, 3)), pad=1)
    path = save(g.model([out]), tmp_path / "m.onnx")
    x = inputs([1, 8, 5, 5])
    x[:, :, 1] = 0.0
    report = check(path, x, ["-> pack_ternary", "-> ternary_conv2d"])
    assert report.binary_checked == 1  # the estimator's output, compared with ORT's
    assert all(r.binary for r in inspect_onnx(path) if r.op_type in ("Clip", "Sign", "Sub", "Add", "Conv"))


def test_unbounded_straight_through_estimator_stays_float_and_says_why(tmp_path):
    """``x + (Sign(x) - x)`` is ``Sign(x)`` in real arithmetic but not in float32 (at x = 3e7,
    ``1 - x`` rounds): the conv stays float, exact, and ``inspect`` names a counterexample."""
    g = GraphBuilder([1, 8, 5, 5], seed=9)
    estimator = g.node("Add", ["x", g.node("Sub", [g.node("Sign", ["x"]), "x"])])
    out = g.conv(estimator, g.binary_weight((4, 8, 3, 3)), pad=1)
    path = save(g.model([out]), tmp_path / "m.onnx")
    assert verify(path, "x86", x=inputs([1, 8, 5, 5])).ok
    reports = inspect_onnx(path)
    conv = next(r for r in reports if r.op_type == "Conv")
    add = next(r for r in reports if r.op_type == "Add")
    assert not conv.binary and "straight-through estimator" in conv.note, conv.note
    assert "not proven" in add.note and "at x = " in add.note, add.note


def test_sign_zero_plus_runs_every_sign_at_the_binary_cost_and_says_what_differs(tmp_path):
    """``--sign-zero plus``: a ``Sign`` that can see 0 is the ``x >= 0`` binarizer (one bit plane,
    no ternary kernel), exact against the float graph with Sign(0) = +1, and verify
    counts where the float graph itself differs (the zeros of x)."""
    path = save(ternary_sign_graph(), tmp_path / "m.onnx")
    x = inputs([1, 21, 7, 7], batch=2)
    x[:, :, 0, :] = 0.0
    exact = verify(path, "x86", x=x)
    plus = verify(path, "x86", x=x, sign_zero="plus")
    assert exact.ok and plus.ok, "\n".join(plus.lines())
    assert "pack_ternary" in " ".join(exact.fused) and "pack_ternary" not in " ".join(plus.fused)
    values, _ = plus.float_graph_differences
    assert values >= 2 * 21 * 7  # the first Sign's zeros (+1 here, 0 in the float graph), and the later ones
    assert any("--sign-zero plus" in line for line in plus.lines())
    assert exact.float_graph_differences is None


QUANTS = [  # (scale, zero point, bits, signed, narrow, rounding mode)
    (0.05, 0.0, 8, 1, 1, "ROUND"), (0.125, 0.0, 8, 1, 0, "ROUND"), (0.3, 2.0, 4, 0, 0, "FLOOR"),
    (0.2, 0.0, 3, 0, 1, "CEIL"), (0.7, 0.0, 1, 1, 0, "ROUND"), (0.5, 0.0, 2, 1, 1, "ROUND"),
]


def test_qonnx_quant_matches_its_definition_and_feeds_a_binary_net(tmp_path):
    """Brevitas' multi-bit ``Quant`` (8-bit input quantizer of its CNV net and others), each
    attribute combination, expanded into standard ONNX: equal to QONNX's definition on values
    at and around the rounding ties; a model with a Quant on the input before binary convs
    compiles and verifies exactly."""
    from bnn_tvm.frontend.onnx_import import expand_qonnx
    from bnn_tvm.compilation.reference import reference_outputs

    domain = "qonnx.custom_op.general"
    g = GraphBuilder([1, 4, 6, 6], seed=25)
    outs = []
    for k, (scale, zeropt, bits, signed, narrow, mode) in enumerate(QUANTS):
        inputs_ = ["x", g.const(np.float32(scale)), g.const(np.float32(zeropt)), g.const(np.float32(bits))]
        outs.append(f"q{k}")
        g.nodes.append(helper.make_node("Quant", inputs_, [f"q{k}"], name=f"quant{k}", domain=domain, signed=signed,
                                        narrow=narrow, rounding_mode=mode))
    model = g.model([])
    del model.graph.output[:]
    model.graph.output.extend(helper.make_empty_tensor_value_info(o) for o in outs)
    model.opset_import.append(helper.make_opsetid(domain, 1))
    x = (np.random.default_rng(3).standard_normal((5, 4, 6, 6)) * 4).astype(np.float32)
    x[0] = (np.arange(4 * 36).reshape(4, 6, 6) - 72).astype(np.float32) * np.float32(0.025)  # ties of every scale
    got = reference_outputs(expand_qonnx(model), x, "x")
    for (scale, zeropt, bits, signed, narrow, mode), have in zip(QUANTS, got):
        want = qonnx_quant_reference(x, np.float32(scale), np.float32(zeropt), bits, signed, narrow, mode)
        np.testing.assert_array_equal(have, want, err_msg=str((scale, zeropt, bits, signed, narrow, mode)))

    g = GraphBuilder([1, 8, 6, 6], seed=26)
    quantized = g.name("q")
    g.nodes.append(helper.make_node("Quant", ["x", g.const(np.float32(0.05)), g.const(np.float32(0)), g.const(np.float32(8))],
                                    [quantized], name="input_quant", domain=domain, signed=1, narrow=0))
    y = g.batch_norm(g.conv(g.binarize(quantized), g.binary_weight((16, 8, 3, 3)), pad=1), *g.random_bn(16, 0.3))
    out = g.conv(g.binarize(y), g.binary_weight((4, 16, 3, 3)))
    model = g.model([out])
    model.opset_import.append(helper.make_opsetid(domain, 1))
    check(save(model, tmp_path / "m.onnx"), inputs([1, 8, 6, 6]), ["binary_conv2d_threshold", "-> binary_conv2d"])


def test_brevitas_qonnx_export_with_an_8_bit_input_quant(tmp_path):
    """Brevitas' CNV-style net: an 8-bit ``Quant`` on the input (refused as an unknown op before),
    a binary-weight conv on it (float: 8-bit activations), then binary layers."""
    path = export_brevitas(brevitas_binary_net("Int8ActPerTensorFloat", 3), 3, tmp_path / "cnv.onnx")
    assert any(n.op_type == "Quant" for n in onnx.load(path).graph.node)
    report = check(path, inputs([1, 3, 6, 6]), ["-> binary_conv2d"])
    assert report.binary_checked == 1


def test_xnor_net_per_sample_activation_scale_moves_after_the_conv(tmp_path):
    """XNOR-Net's ``conv(mean(abs(x)) * Sign(x), alpha * sign(W))``: the conv on ``Sign(x)`` is
    binary and the per-sample mean multiplies its output; verify exact on these inputs (the
    batch norm and binarizer after it decide on float values within rounding of the graph's)."""
    g = GraphBuilder([1, 16, 6, 6], seed=27)

    def xnor_input(t):
        beta = g.node("ReduceMean", [g.node("Abs", [t])], axes=[1, 2, 3], keepdims=1)
        return g.node("Mul", [g.node("Sign", [t]), beta])

    alpha = g.rng.uniform(0.1, 1, (24, 1, 1, 1)).astype(np.float32)
    y = g.batch_norm(g.conv(xnor_input("x"), g.binary_weight((24, 16, 3, 3)) * alpha, pad=1), *g.random_bn(24, 0.3))
    out = g.conv(xnor_input(y), g.binary_weight((8, 24, 3, 3)), pad=1)
    model = g.model([out])
    model.opset_import[0].version = 13  # ReduceMean with axes as an attribute
    path = save(model, tmp_path / "m.onnx")
    check(path, inputs([1, 16, 6, 6], batch=4), ["-> ternary_conv2d"])
    convs = [r for r in inspect_onnx(path) if r.op_type == "Conv"]
    assert all(r.binary for r in convs), [(r.name, r.note) for r in convs]


def test_larq_binarizers_between_tf2onnx_transposes(tmp_path):
    """tf2onnx's layout: the transposes around Larq's binarizer (and its +1 pad) cancel, the
    binarizer is recognised (x = 0 gives +1), the BN that tf2onnx folded into the weights
    (``±gamma/sigma`` per channel, sign flipped for a negative gamma) runs as a scale, and the
    convs are binary, exact at x = 0."""
    g = GraphBuilder([1, 16, 6, 6], seed=28)
    scale = g.rng.uniform(0.2, 2.0, (24, 1, 1, 1)).astype(np.float32) * np.where(g.rng.random((24, 1, 1, 1)) < 0.3, -1, 1)
    y = g.conv(g.larq_binarizer_nhwc("x", pad_one=True), g.binary_weight((24, 16, 3, 3)) * scale.astype(np.float32),
               bias=g.rng.standard_normal(24).astype(np.float32))
    y = g.conv(g.larq_binarizer_nhwc(y, pad_one=False), g.binary_weight((8, 24, 6, 6)))  # to 1x1
    # on a 1x1 feature map tf2onnx writes the transposes as reshapes
    nhwc = g.node("Reshape", [y, g.const(np.array([1, 1, 1, 8], np.int64))])
    bits = g.node("Sign", [g.node("Add", [g.node("Sign", [nhwc]), g.const(np.float32(0.1))])])
    out = g.conv(g.node("Reshape", [bits, g.const(np.array([1, 8, 1, 1], np.int64))]), g.binary_weight((5, 8, 1, 1)))
    path = save(g.model([out]), tmp_path / "m.onnx")
    x = inputs([1, 16, 6, 6], batch=1)
    x[:, :, ::2] = 0.0
    check(path, x, ["-> binary_conv2d_threshold", "-> binary_conv2d "])
    convs = [r for r in inspect_onnx(path) if r.op_type == "Conv"]
    assert all(r.binary for r in convs), [(r.name, r.note) for r in convs]
