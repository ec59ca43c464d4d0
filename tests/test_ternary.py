"""Ternary activations (a ``Sign`` that can output 0) as sign and nonzero bit planes.

Kernels: ``pack_ternary`` and the ternary conv and dense (``schedules.bitserial``), built the way
the passes build them, scheduled for each x86 unit and compared with numpy on values with many
exact zeros. Models: a ``Sign`` that sees 0 feeds a conv or dense, which must run as a ternary
kernel (not two bipolar halves, not float), exact against ONNX Runtime.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import (
    AVX2,
    RASP3B,
    X86,
    binary_conv_ternary_weights_case,
    bipolar,
    build,
    check_case,
    conv_case,
    function_asm,
    host_has_avx512,
    loops,
    inputs,
    packed_decisions,
    planes_of,
    ternary,
    ternary_conv_case,
    ternary_dense_case,
    thresholds,
    words_of,
)
from onnx_builders import GraphBuilder, save, ttq, ttq_graph

from bnn_tvm.compilation.inspection import inspect_onnx
from bnn_tvm.compilation.verify import verify
from bnn_tvm.relay_passes.common import pack_bits
from bnn_tvm.schedules import bitserial


CONV_SHAPES = [
    # n, c, h, w, oc, k, stride, pad
    (1, 64, 12, 12, 64, 3, 1, 1),
    (2, 33, 9, 7, 70, 3, 2, 1),  # batch 2, odd channels, stride 2
    (1, 40, 8, 8, 48, 3, 1, 0),  # unpadded
    (2, 96, 7, 7, 32, 1, 1, 0),  # 1x1
    (1, 5, 6, 5, 3, 3, 2, 1),  # tiny channel counts
]


@pytest.mark.parametrize("shape", CONV_SHAPES, ids=lambda s: "n{}c{}h{}w{}o{}k{}s{}p{}".format(*s))
@pytest.mark.parametrize("form", ["float", "scaled", "threshold"])
def test_ternary_conv_matches_numpy(shape, form, x86_target):  # noqa: F811 (the fixture)
    case = ternary_conv_case(np.random.default_rng(sum(shape)), *shape, threshold=form == "threshold",
                             scale=form == "scaled")
    check_case(case, target=x86_target)


@pytest.mark.parametrize("weights", ["binary", "ternary"])
def test_avx2_ternary_kernels_count_in_bytes(weights):
    """A ternary activation's ``(s ^ w) & m`` and ternary weights' ``(a ^ s) & m`` take the byte
    counters of the AVX2 kernels (one AND more per step), as the binary ``a ^ w`` does, and so
    does a kernel with both ternary (four weighted nibble lookups a step adding ``32 - term``,
    chunks of 15 steps)."""
    rng = np.random.default_rng(5)
    if weights == "binary":
        case = ternary_conv_case(rng, 1, 64, 12, 12, 64, 3, 1, 1)
    else:
        case = binary_conv_ternary_weights_case(rng, 1, 64, 12, 12, 64, 3, 1, 1)
    assert "byte counters" in check_case(case, target=AVX2).plan
    both = ternary_conv_case(rng, 1, 64, 12, 12, 64, 3, 1, 1, ternary_weights=True)
    assert "byte counters" in check_case(both, target=AVX2).plan


def test_avx2_both_ternary_step_looks_up_weighted_nibbles():
    """Both operands ternary on AVX2: four nibble lookups a step (``vpshufb``: popcounts of ``m``,
    ``4 - 2 popcount`` of ``x & m``) and 16 vector operations in all, against 19 for two full
    popcounts and a NOT; no all-ones constant (a NOT) in the loop."""
    _, executable = build(*ternary_conv_case(np.random.default_rng(6), 1, 64, 8, 8, 64, 3, 1, 1,
                                             ternary_weights=True)[:4], AVX2)
    inner = [body for body in loops(function_asm(executable, "main")) if body.count("vpshufb") >= 8]
    assert inner, "no loop looks up nibbles"
    ops = [line.split()[0] for line in inner[0].splitlines()
           if line.startswith("\tv") and not line.split()[0].startswith(("vmov", "vpbroadcast"))]
    steps = ops.count("vpshufb") / 4
    assert len(ops) <= 16 * steps, (len(ops), steps, inner[0])
    assert "vpcmpeqd" not in inner[0], inner[0]


@pytest.mark.parametrize("shape", CONV_SHAPES[:3], ids=lambda s: "n{}c{}h{}w{}o{}k{}s{}p{}".format(*s))
@pytest.mark.parametrize("form", ["float", "threshold"])
def test_ternary_conv_with_ternary_weights_matches_numpy(shape, form, x86_target):  # noqa: F811 (the fixture)
    """Both operands ternary: the taps where both are nonzero counted per output channel."""
    case = ternary_conv_case(np.random.default_rng(sum(shape) + 1), *shape, threshold=form == "threshold",
                             ternary_weights=True)
    check_case(case, target=x86_target)


@pytest.mark.parametrize("shape", CONV_SHAPES, ids=lambda s: "n{}c{}h{}w{}o{}k{}s{}p{}".format(*s))
@pytest.mark.parametrize("form", ["float", "threshold"])
def test_binary_conv_with_ternary_weights_matches_numpy(shape, form, x86_target):  # noqa: F811 (the fixture)
    case = binary_conv_ternary_weights_case(np.random.default_rng(sum(shape) + 2), *shape, threshold=form == "threshold")
    check_case(case, target=x86_target)


@host_has_avx512
@pytest.mark.parametrize("oc", [64, 24, 12], ids=["16-lanes", "8-lanes", "4-lanes"])
def test_both_ternary_steps_multiply_add(oc):
    """Both operands ternary in 32-bit counters on a unit with VNNI: the doubled mismatch count
    is added by ``vpdpwssd`` (512, 256 and 128 bits), exact on convs (float and threshold output)
    and denses; the conv's inner loop has no separate doubling."""
    rng = np.random.default_rng(oc)
    for case in (ternary_conv_case(rng, 1, 40, 8, 8, oc, 3, 1, 1, ternary_weights=True),
                 ternary_conv_case(rng, 1, 64, 6, 6, oc, 3, 1, 1, threshold=True, ternary_weights=True),
                 ternary_dense_case(rng, 3, 96, oc, ternary_weights=True)):
        plan = check_case(case, target=X86).plan
        assert "multiply-add" in plan, plan
    _, executable = build(*ternary_conv_case(rng, 1, 64, 8, 8, 64, 3, 1, 1, ternary_weights=True)[:4], X86)
    inner = [body for body in loops(function_asm(executable, "main")) if "vpdpwssd" in body]
    assert inner, "no loop multiply-adds"
    doublings = [line for line in inner[0].splitlines() if re.search(r"vpaddd\t(%zmm\d+), \1,", line)]
    assert not doublings, doublings


PAIR_SHAPES = [
    # n, c, h, w, oc, k, stride, pad: at most 16 channels a tap (one word, its upper half 0)
    (1, 16, 10, 8, 32, 3, 1, 1),
    (2, 13, 6, 12, 16, 3, 1, 1),  # batch 2, odd channels, a 12-position tile
    (1, 8, 9, 8, 16, 3, 1, 0),  # unpadded
    (1, 1, 6, 6, 16, 5, 1, 2),  # one channel, 5x5
]


def operands_case(rng, operands: str, shape, dilation: int = 1):
    """A float-output conv of ``shape`` with binary or ternary activations and weights."""
    if operands == "binary":
        return conv_case(rng, *shape, threshold=False, dilation=dilation)
    if operands == "ternary_weights":
        return binary_conv_ternary_weights_case(rng, *shape)
    return ternary_conv_case(rng, *shape, dilation=dilation, ternary_weights=operands == "both")


@pytest.mark.parametrize("shape", PAIR_SHAPES, ids=lambda s: "n{}c{}h{}w{}o{}k{}s{}p{}".format(*s))
@pytest.mark.parametrize("operands", ["binary", "ternary_input", "ternary_weights", "both"])
def test_convs_over_16_channels_count_position_pairs(shape, operands, x86_target):  # noqa: F811 (the fixture)
    """A conv over at most 16 channels with both operands ternary counts two output positions per
    32-bit lane in 16-bit halves where the unit has ``vpopcntw`` (AVX-512 BITALG); the
    single-popcount kinds, AVX-512 without VPOPCNTDQ and AVX2 keep their counters; all exact
    (values exactly 0 included)."""
    case = operands_case(np.random.default_rng(sum(shape) + len(operands)), operands, shape)
    plan = check_case(case, target=x86_target).plan
    assert ("position pairs" in plan) == (x86_target is X86 and operands == "both"), plan


@host_has_avx512
def test_position_pairs_dilated_and_strided():
    """Dilation keeps a pair's words neighbours (pairs); stride 2 does not (no pairs); both exact."""
    rng = np.random.default_rng(11)
    dilated = check_case(operands_case(rng, "both", (1, 16, 10, 8, 16, 3, 1, 2), dilation=2), target=X86)
    assert "position pairs" in dilated.plan, dilated.plan
    strided = check_case(operands_case(rng, "both", (1, 16, 12, 12, 16, 3, 2, 1)), target=X86)
    assert "position pairs" not in strided.plan, strided.plan


@host_has_avx512
def test_position_pairs_count_16_bit_halves():
    """The pair step's inner loop: ``vpopcntw`` on the joined words, no 32-bit popcount, and the
    mismatches and both-nonzero taps of both ternary in two counters (no all-ones NOT a step)."""
    scheduled, executable = build(*ternary_conv_case(np.random.default_rng(2), 1, 16, 8, 8, 16, 3, 1, 1,
                                                     ternary_weights=True)[:4], X86)
    assert "position pairs" in scheduled.plan, scheduled.plan
    inner = [body for body in loops(function_asm(executable, "main")) if "vpopcntw" in body]
    assert inner, "no loop counts 16-bit halves"
    assert all("vpopcntd" not in body and "$255" not in body for body in inner), inner[0]


def test_dilated_ternary_conv_matches_numpy():
    check_case(ternary_conv_case(np.random.default_rng(3), 1, 32, 9, 9, 40, 3, 1, 2, dilation=2))


@pytest.mark.parametrize("n,k,o", [(1, 640, 10), (3, 70, 50), (5, 96, 64)])
@pytest.mark.parametrize("threshold", [False, True], ids=["float", "threshold"])
def test_ternary_dense_matches_numpy(n, k, o, threshold, x86_target):  # noqa: F811 (the fixture)
    check_case(ternary_dense_case(np.random.default_rng(n + k + o), n, k, o, threshold), target=x86_target)


@pytest.mark.parametrize("n,k,o", [(1, 640, 10), (3, 70, 50)])
@pytest.mark.parametrize("threshold", [False, True], ids=["float", "threshold"])
def test_dense_with_ternary_weights_matches_numpy(n, k, o, threshold, x86_target):  # noqa: F811 (the fixture)
    """Ternary weights on a ternary input (both masked), and on a binary input (the binary dense
    with weight planes and per-output ``nonzeros - taps``)."""
    rng = np.random.default_rng(n + k)
    check_case(ternary_dense_case(rng, n, k, o, threshold, ternary_weights=True), target=x86_target)
    a, weight = bipolar(rng, (n, k)), ternary(rng, (o, k), 0.4)
    dot = a @ weight.T
    offsets = (np.count_nonzero(weight, axis=1) - k).astype(np.int32)
    inputs_ = [pack_bits(a), planes_of(weight), offsets]
    attrs = {"bnn.taps": k, "bnn.ternary_weights": 1}
    if threshold:
        low, high = thresholds(rng, o)
        case = ("binary_dense_threshold", attrs, inputs_ + [low, high],
                lambda d, w, f, lo, hi: bitserial.threshold_pack(bitserial.binary_dense_dot(d, w, k, f), lo, hi),
                packed_decisions((dot >= low) & (dot <= high)))
    else:
        case = ("binary_dense", attrs, inputs_,
                lambda d, w, f: bitserial.dot_to_float_nchw(bitserial.binary_dense_dot(d, w, k, f)), dot.astype(np.float32))
    check_case(case, target=x86_target)


@pytest.mark.parametrize("shape", [(2, 70, 5, 8), (1, 64, 16, 16), (3, 37)])
def test_pack_ternary_matches_numpy(shape):
    """Exact zeros (and -0.0) to a 0 in both planes, the rest by sign; channel padding bits 0."""
    rng = np.random.default_rng(len(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    x[rng.random(shape) < 0.3] = 0.0
    x.flat[1] = -0.0
    expected = words_of(np.sign(x).astype(np.int64))
    case = ("pack_ternary", {}, [x], bitserial.pack_ternary, expected)
    check_case(case, fast=len(shape) == 4)


def test_rasp3b_ternary_conv_compiles_with_cnt():
    """The aarch64 build vectorises the masked popcount (``cnt`` on 128-bit vectors)."""
    _, executable = build(*ternary_conv_case(np.random.default_rng(0), 1, 64, 12, 12, 64, 3, 1, 1)[:4], RASP3B)
    asm = executable.mod.inspect_source("asm")
    assert "cnt\tv" in asm and "and\tv" in asm


# ------------------------------------------------------------------------------------------
# Models: the kernels the passes choose, exact against ONNX Runtime


def residual_sign_graph():
    """BinaryNet-style residual block with ``torch.sign`` after the add: the sum of two binary
    convs' integer results is 0 wherever they cancel, so the next conv reads a true ternary
    ``Sign``; then a dense on another ``Sign`` that sees 0."""
    g = GraphBuilder([1, 16, 8, 8], seed=21)
    bits = g.binarize("x")
    a = g.conv(bits, g.binary_weight((16, 16, 3, 3)), pad=1)
    b = g.conv(bits, g.binary_weight((16, 16, 3, 3)), pad=1)
    y = g.conv(g.node("Sign", [g.node("Add", [a, b])]), g.binary_weight((24, 16, 3, 3)), pad=1, stride=2)
    y = g.node("Flatten", [g.node("Sign", [g.node("Add", [y, y])])])  # even sums: 0 where y is 0
    return g.model([g.node("MatMul", [y, g.const(g.binary_weight((24 * 4 * 4, 10)))])])


def test_sign_that_sees_zero_runs_as_ternary_kernels(tmp_path):
    report = verify(save(residual_sign_graph(), tmp_path / "m.onnx"), "x86", x=inputs([4, 16, 8, 8]))
    assert report.ok, "\n".join(report.lines())
    fused = " | ".join(report.fused)
    assert fused.count("-> pack_ternary") == 2, fused
    assert "-> ternary_conv2d" in fused and "-> ternary_dense" in fused, fused
    assert "pack_sign_pair" not in fused, fused
    assert report.binary_checked == 2 + 1  # the two ternary Signs and the binarizer of x


def test_ternary_kernels_are_compared_in_verify(tmp_path, monkeypatch):
    """Mutation check: a ternary kernel that read a 0 as -1 (every nonzero word all ones) is caught."""
    original = bitserial.pack_ternary

    def zeros_as_minus_one(x):
        planes = original(x)
        from tvm import te, tirx

        return te.compute(planes.shape, lambda *i: tirx.if_then_else(i[-1] % 2 == 1, tirx.const(0xFFFFFFFF, "uint32"),
                                                                     planes[i]), name="broken")

    monkeypatch.setattr(bitserial, "pack_ternary", zeros_as_minus_one)
    report = verify(save(residual_sign_graph(), tmp_path / "m.onnx"), "x86", x=inputs([4, 16, 8, 8]))
    assert not report.ok


def ternary_weight_graph():
    """TWN layers: ``{-alpha, 0, +alpha}`` weights (alpha not a power of two) on binarized
    input, a batch norm and binarizer between (a threshold with the scale's rounding band), a
    conv with ternary weights on a ``Sign`` that sees 0 (both operands ternary), and a
    BinaryNet-style ``sign(W)`` whose latent weights hold exact zeros."""
    g = GraphBuilder([1, 16, 8, 8], seed=31)
    rng = np.random.default_rng(31)

    def twn(shape, alpha):
        return (ternary(rng, shape, 0.35) * np.float32(alpha)).astype(np.float32)

    y = g.batch_norm(g.conv(g.binarize("x"), twn((24, 16, 3, 3), 0.37), pad=1), *g.random_bn(24, 0.3))
    # float output: the scale in the epilogue (a power of two, so that the float graph's sum is
    # exact too and the Sign after it sees the same zeros)
    y = g.conv(g.binarize(y), twn((16, 24, 3, 3), 0.5), pad=1)
    y = g.conv(g.node("Sign", [y]), ternary(rng, (16, 16, 3, 3), 0.3).astype(np.float32), pad=1, stride=2)
    # denses with TWN weights: on a binarizer (after a batch norm: a threshold) and on a Sign
    flat = g.node("Flatten", [g.binarize(g.batch_norm(y, *g.random_bn(16, 0.3)))])
    hidden = g.node("MatMul", [flat, g.const(twn((16 * 4 * 4, 40), 0.25).T.copy().T)])
    out = g.node("MatMul", [g.node("Sign", [hidden]), g.const(twn((40, 10), 1.0))])
    return g.model([y, out])


def test_ternary_weights_run_in_binary_and_ternary_kernels(tmp_path):
    x = inputs([4, 16, 8, 8])
    x[:, :, ::4] = 0.0
    report = verify(save(ternary_weight_graph(), tmp_path / "m.onnx"), "x86", x=x)
    assert report.ok, "\n".join(report.lines())
    fused = " | ".join(report.fused)
    assert fused.count("ternary weights") == 5, fused
    assert "-> binary_dense" in fused and "-> ternary_dense" in fused, fused
    assert "-> binary_conv2d_threshold" in fused and "-> ternary_conv2d" in fused, fused
    convs = [r for r in inspect_onnx(str(tmp_path / "m.onnx")) if r.op_type == "Conv"]
    assert len(convs) == 3 and all(r.binary for r in convs), convs


def test_sign_on_tokens_and_conv1d_inputs_runs_ternary(tmp_path):
    """``torch.sign`` on ``[N, T, C]`` tokens before a matmul (a dense over the rows), and after
    the residual add of two such layers; ``torch.sign`` on a 1-D conv's ``[N, C, L]`` input (a
    one-row conv): ternary kernels, exact with exact zeros, each credited to its ONNX nodes."""
    g = GraphBuilder([1, 16, 64], seed=3)
    y = g.node("MatMul", [g.node("Sign", ["x"]), g.const(g.binary_weight((64, 64)))])
    y = g.node("MatMul", [g.node("Sign", [g.node("Add", [y, g.node("MatMul", [g.node("Sign", ["x"]),
                                                                               g.const(g.binary_weight((64, 64)))])])]),
                          g.const(g.binary_weight((64, 32)))])
    x = inputs([2, 16, 64])
    x[:, ::3] = 0.0
    report = verify(save(g.model([y]), tmp_path / "tokens.onnx"), "x86", x=x)
    assert report.ok, "\n".join(report.lines())
    fused = " | ".join(report.fused)
    assert fused.count("-> ternary_dense") == 3 and "[]" not in fused, fused

    g = GraphBuilder([1, 32, 20], seed=4)
    y = g.node("Conv", [g.node("Sign", ["x"]), g.const(g.binary_weight((16, 32, 3)), "w")], kernel_shape=[3],
               pads=[1, 1], strides=[1])
    x = inputs([2, 32, 20])
    x[:, :, ::3] = 0.0
    report = verify(save(g.model([y]), tmp_path / "conv1d.onnx"), "x86", x=x)
    assert report.ok and report.binary_checked == 1, "\n".join(report.lines())
    fused = " | ".join(report.fused)
    assert "-> ternary_conv2d [node_conv" in fused and "pack_ternary [node_conv_3, node_sign_1]" in fused, fused


def ttq_inputs():
    x = inputs([4, 16, 8, 8])
    x[:, :, ::3] = 0.0  # Sign(x) = 0 there: the ternary activation's zeros
    return x


def test_ttq_weights_run_in_binary_and_ternary_kernels(tmp_path):
    path = save(ttq_graph(), tmp_path / "m.onnx")
    report = verify(path, "x86", x=ttq_inputs())
    assert report.ok, "\n".join(report.lines())
    assert report.binary_checked == 6  # three binarizers, three Signs
    fused = " | ".join(report.fused)
    assert fused.count("TTQ weights") == 6, fused
    assert fused.count("TTQ weights {-a, 0, +b} per layer") == 3, fused
    reports = inspect_onnx(path)
    layers = [r for r in reports if r.op_type in ("Conv", "MatMul")]
    assert len(layers) == 6 and all(r.binary for r in layers), [(r.name, r.note) for r in layers]
    # the convs' difference b*P - a*N in their own kernels (FuseTtqDifference), the denses' on its own
    assert [r.kernel for r in layers] == ["binary_conv2d_ttq", "binary_conv2d_ttq", "ternary_conv2d_ttq",
                                          "ternary_conv2d_ttq", "binary_dense", "ternary_dense"], \
        [(r.name, r.kernel) for r in layers]
    first_bn = next(r for r in reports if r.op_type == "BatchNormalization")
    assert "after a TTQ conv's b*P - a*N: exact" in first_bn.note, first_bn.note


def test_ttq_threshold_within_rounding_of_reachable_values_is_not_proven(tmp_path):
    """Scales on no common grid (0.61, 1.37): the float sums round, the reachable ``b * P - a *
    N`` lie dense, and channels whose threshold one of them lies within the rounding band of are
    named in ``inspect``; the compiled model still verifies (no input lands on such a tie)."""
    path = save(ttq_graph(b=0.61, a=1.37), tmp_path / "m.onnx")
    first_bn = next(r for r in inspect_onnx(path) if r.op_type == "BatchNormalization")
    assert "after a TTQ conv's b*P - a*N: not proven exact in 7 of 24 channels" in first_bn.note, first_bn.note
    assert verify(path, "x86", x=ttq_inputs()).ok


def test_ttq_margin_is_checked_at_each_bound():
    """``asymmetric_margin`` against brute force over every reachable (P, N), on bounds placed on,
    beside and between reachable values."""
    from bnn_tvm.relay_passes.analysis.rounding import asymmetric_margin, sum_rounding_error

    rng = np.random.default_rng(7)
    plus, minus = np.float32([0.61, 0.3]), np.float32([1.37, 0.7])
    positives, negatives, taps = np.array([5, 4]), np.array([6, 3]), 12
    band = sum_rounding_error(taps, np.maximum(plus, minus).astype(np.float64), roundings=3)
    for _ in range(200):
        low = np.float32(rng.uniform(-8, 8, 2))
        p, n = rng.integers(-4, 5, 2), rng.integers(-3, 4, 2)
        on_value = rng.random(2) < 0.5  # half the bounds exactly on a reachable value
        low = np.where(on_value, (plus * p - minus * n).astype(np.float32), low)
        high = np.full(2, np.inf, np.float32)
        got = asymmetric_margin(plus, minus, positives, negatives, taps, low, high)
        for o in range(2):
            values = [plus[o] * float(i) - minus[o] * float(j) for i in range(-positives[o], positives[o] + 1)
                      for j in range(-negatives[o], negatives[o] + 1)]
            near = min(abs(v - float(low[o])) for v in values) <= band[o] + float(np.spacing(np.float32(abs(low[o]))))
            assert got[o] == (not near), (o, low[o])


def test_weight_off_the_two_ttq_values_stays_float(tmp_path):
    g = GraphBuilder([1, 16, 8, 8], seed=42)
    weight = ttq(np.random.default_rng(42), (8, 16, 3, 3), 0.61, 1.37)
    weight[3, 5, 1, 1] = np.nextafter(np.float32(0.61), np.float32(1))  # one weight an ulp off +b
    path = save(g.model([g.conv(g.binarize("x"), weight, pad=1)]), tmp_path / "m.onnx")
    (conv,) = [r for r in inspect_onnx(path) if r.op_type == "Conv"]
    assert not conv.binary
    assert "output channel 3 has 2 distinct positive weights (not TTQ's {-a, 0, +b}" in conv.note, conv.note
    assert verify(path, "x86", x=ttq_inputs()).ok
