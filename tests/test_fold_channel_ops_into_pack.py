"""FoldChannelOpsIntoPack: the batch norm before a DenseNet layer's binarizer runs inside the
pack, and a channel concat is packed part by part (BinaryDenseNet, Larq's zoo)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx_builders import GraphBuilder, save

from bnn_tvm.compilation.compiler import lower_onnx
from bnn_tvm.compilation.verify import verify

KERNEL = "pack_sign_steps"


def dense_block(g: GraphBuilder, features: str, channels: int, growth: int, layers: int):
    """DenseNet layers: ``concat(features, conv(binarize(bn(features))))``, ``layers`` times."""
    for _ in range(layers):
        bits = g.binarize(g.batch_norm(features, *g.random_bn(channels, negative_fraction=0.3)))
        grown = g.conv(bits, g.binary_weight((growth, channels, 3, 3)), pad=1)
        features = g.node("Concat", [features, grown], axis=1)
        channels += growth
    return features, channels


def densenet_model(path, growth: int = 32, transition: bool = False) -> str:
    """A stem conv, a dense block, optionally a float 1x1 transition conv (read by the next
    layer's batch norm and by the next concat) and a second block; the last concat's batch
    norm and ReLU are the output."""
    g = GraphBuilder([1, 3, 8, 8], seed=31)
    rng = np.random.default_rng(31)
    stem = g.conv("x", rng.standard_normal((32, 3, 3, 3)).astype(np.float32), pad=1)
    features, channels = dense_block(g, stem, 32, growth, 3)
    if transition:
        features = g.conv(g.node("Relu", [features]), rng.standard_normal((64, channels, 1, 1)).astype(np.float32))
        features, channels = dense_block(g, features, 64, growth, 2)
    out = g.node("Relu", [g.batch_norm(features, *g.random_bn(channels))])
    return save(g.model([out]), path)


def inputs(batch=3):
    return np.random.default_rng(32).standard_normal((batch, 3, 8, 8)).astype(np.float32)


def pack_lines(report) -> list[str]:
    return [line for line in report.fused if f"-> {KERNEL} " in line]


@pytest.mark.parametrize("transition", [False, True])
def test_dense_block_packs_each_part_with_its_batch_norm(tmp_path, transition):
    path = densenet_model(tmp_path / "m.onnx", transition=transition)
    report = verify(path, "x86", x=inputs())
    assert report.ok and report.exact, "\n".join(report.lines())
    assert report.binary_checked >= 3
    lines = pack_lines(report)
    assert len(lines) == (5 if transition else 3), report.fused  # one per layer's binarizer
    assert sum("concatenated parts packed apart" in line for line in lines) == (3 if transition else 2), lines
    # the transition conv is computed once: its batch norm went into the pack, not into a second conv
    assert not any("float conv + " in line for line in report.fused), report.fused
    lowered = lower_onnx(path)
    text = lowered.mod["main"].script()
    assert text.count("R.nn.batch_norm") == 1  # only the output's
    # every batch norm became float bounds compared in the pack, no arithmetic
    packs = [f for f in lowered.mod.functions.values() if f.attrs is not None and "bnn.op" in f.attrs
             and str(f.attrs["bnn.op"]) == KERNEL]
    assert packs and all(str(f.attrs["bnn.steps"]) == "within" for f in packs)


def test_parts_off_word_boundaries_pack_the_concat_whole(tmp_path):
    """Growth 16: the third layer's parts (32, 16, 16 channels) start inside a packed word, so
    its concat stays and one pack reads it; the batch norm still runs inside the pack. The
    second layer's (32, 16) split on a word boundary."""
    path = densenet_model(tmp_path / "m.onnx", growth=16)
    report = verify(path, "x86", x=inputs())
    assert report.ok and report.exact, "\n".join(report.lines())
    lines = pack_lines(report)
    assert len(lines) == 3 and [("packed apart" in line) for line in lines] == [False, True, False], lines


def test_single_use_float_conv_keeps_its_epilogue(tmp_path):
    """A batch norm after a float conv read by nothing else stays the conv's epilogue."""
    g = GraphBuilder([1, 3, 8, 8], seed=33)
    rng = np.random.default_rng(33)
    stem = g.conv("x", rng.standard_normal((32, 3, 3, 3)).astype(np.float32), pad=1)
    bits = g.binarize(g.batch_norm(stem, *g.random_bn(32)))
    out = g.conv(bits, g.binary_weight((8, 32, 3, 3)), pad=1)
    path = save(g.model([out]), tmp_path / "m.onnx")
    report = verify(path, "x86", x=inputs())
    assert report.ok and report.exact, "\n".join(report.lines())
    assert not pack_lines(report) and any("float conv + " in line for line in report.fused), report.fused


@pytest.mark.parametrize("strict", [False, True])
def test_decision_bounds_agree_with_the_float_chain(strict):
    """The bounds found by bisection decide every float32 as the batch norm chain rounded in
    float32 does: random values, values next to each bound, zeros of both signs, infinities."""
    from bnn_tvm.relay_passes.fold_channel_ops_into_pack import chain_at, decision_bounds
    from bnn_tvm.relay_passes.analysis.chain import Step

    rng = np.random.default_rng(34)
    channels = 64
    scale = rng.uniform(0.1, 3, channels).astype(np.float32) * np.where(rng.random(channels) < 0.3, -1, 1)
    scale[:2] = np.float32(1e-30), np.float32(-3e38)  # underflow and overflow of x * s
    shift = rng.standard_normal(channels).astype(np.float32)
    shift[2] = 0
    steps = [Step("multiply", scale.astype(np.float32)), Step("add", shift)]
    low, high = decision_bounds(steps, strict)
    probes = [rng.standard_normal(channels).astype(np.float32) * np.float32(10.0 ** rng.integers(-30, 30))
              for _ in range(200)]
    for bound in (low, high):
        finite = np.where(np.isfinite(bound), bound, 0).astype(np.float32)
        probes += [finite, np.nextafter(finite, np.float32(np.inf)), np.nextafter(finite, np.float32(-np.inf))]
    probes += [np.full(channels, v, np.float32) for v in (0.0, -0.0, np.inf, -np.inf)]
    for x in probes:
        y = chain_at(steps, x)
        expected = y > 0 if strict else y >= 0
        assert np.array_equal((x >= low) & (x <= high), expected)


def test_chain_not_provably_monotone_has_no_bounds():
    from bnn_tvm.relay_passes.fold_channel_ops_into_pack import decision_bounds
    from bnn_tvm.relay_passes.analysis.chain import Step

    zero_scale = [Step("multiply", np.array([1.0, 0.0], np.float32)), Step("add", np.ones(2, np.float32))]
    assert decision_bounds(zero_scale, False) is None
