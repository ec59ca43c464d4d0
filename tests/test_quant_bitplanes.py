"""QONNX ``Quant`` (k-bit, as QONNX defines it) feeding binary-weight convs: bit planes, exact.

The expanded Quant ``(round(clip(x / s + z, low, high)) - z) * s`` becomes ``pack_levels``
(``u = q - low`` as k planes) and the conv a ``multibit_conv2d``: the exact integer ``sum (q - z)
* w`` times s. Inputs hold values exactly on rounding ties (``x / s + z = n + 1/2``), at and
beyond the clip bounds, and the convs zero-pad (the float 0 is the level ``z - low``).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import qonnx_quant_reference
from onnx import helper
from onnx_builders import GraphBuilder, save

from bnn_tvm.compilation.inspection import inspect_onnx
from bnn_tvm.frontend.qonnx_quant import integer_range
from bnn_tvm.compilation.verify import verify
from bnn_tvm.schedules import bitserial

DOMAIN = "qonnx.custom_op.general"


def add_quant(g: GraphBuilder, x: str, scale, zeropt, bits, signed, narrow, mode="ROUND") -> str:
    out = g.name("quant")
    inputs = [x, g.const(np.float32(scale)), g.const(np.float32(zeropt)), g.const(np.float32(bits))]
    g.nodes.append(helper.make_node("Quant", inputs, [out], name=f"node_{out}", domain=DOMAIN, signed=signed,
                                    narrow=narrow, rounding_mode=mode))
    return out


def quant_conv_model(scale, zeropt, bits, signed, narrow, mode="ROUND", channels=32, pad=1, alpha=None, seed=0):
    """x -> Quant -> conv 3x3 (±1 or ±alpha weights, zero padding ``pad``) -> output."""
    g = GraphBuilder([1, channels, 6, 6], seed=seed)
    weight = g.binary_weight((16, channels, 3, 3)) * (1 if alpha is None else alpha)
    out = g.conv(add_quant(g, "x", scale, zeropt, bits, signed, narrow, mode), weight.astype(np.float32), pad=pad)
    model = g.model([out])
    model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return model


def tie_inputs(scale, zeropt, bits, signed, narrow, channels=32, batch=2, seed=0) -> np.ndarray:
    """Inputs whose ``x / s + z`` (in float32) is every ``n + 1/2`` from below the range to above
    it, exactly each integer bound, far outside, and random values; tiled over ``[batch,
    channels, 6, 6]`` in a seeded order."""
    low, high = integer_range(bool(signed), bool(narrow), bits)
    s, z = np.float32(scale), np.float32(zeropt)
    targets = np.concatenate([np.arange(low - 2, high + 2) + 0.5, [low, high, low - 1, high + 1]]).astype(np.float32)
    x = ((targets - z) * s).astype(np.float32)
    exact = ((x / s).astype(np.float32) + z).astype(np.float32) == targets  # ties the float graph really sees
    rng = np.random.default_rng(seed)
    values = np.concatenate([x[exact], np.float32([1e4, -1e4]) * s, rng.standard_normal(64).astype(np.float32) * s * high])
    size = batch * channels * 36
    return rng.permutation(np.resize(values, size)).astype(np.float32).reshape(batch, channels, 6, 6)


def fused_text(report) -> str:
    return " | ".join(report.fused)


QUANT_FORMS = [  # (scale, zero point, bits, signed, narrow)
    (0.25, 0.0, 2, 0, 0),
    (0.1, 0.0, 2, 0, 1),
    (0.25, 0.0, 4, 1, 0),
    (0.3, 0.0, 4, 0, 1),
    (0.125, 2.0, 4, 0, 0),  # a zero point: padding is the level 2
    (0.0078125, 0.0, 8, 1, 0),  # Brevitas' Int8ActPerTensorFloat on [-1, 1)
    (0.05, 0.0, 8, 1, 1),
    (0.00392157, 0.0, 8, 0, 0),  # Uint8ActPerTensorFloat
    (0.5, -3.0, 4, 1, 0),
]


@pytest.mark.parametrize("scale,zeropt,bits,signed,narrow", QUANT_FORMS)
def test_quant_feeding_a_binary_conv_runs_as_bit_planes(tmp_path, scale, zeropt, bits, signed, narrow):
    path = save(quant_conv_model(scale, zeropt, bits, signed, narrow), tmp_path / "m.onnx")
    x = tie_inputs(scale, zeropt, bits, signed, narrow)
    report = verify(path, "x86", x=x)
    assert report.ok, "\n".join(report.lines())
    assert "-> pack_levels" in fused_text(report) and "-> multibit_conv2d" in fused_text(report), fused_text(report)
    convs = [r for r in inspect_onnx(path) if r.op_type == "Conv"]
    assert convs and all(r.kernel == "multibit_conv2d" for r in convs), [(r.name, r.kernel, r.note) for r in convs]


def test_tie_inputs_hit_every_tie_and_both_bounds():
    """The inputs above reach the values the test means: ties of every level, both clip bounds."""
    scale, zeropt, bits, signed, narrow = 0.3, 0.0, 4, 0, 1
    x = tie_inputs(scale, zeropt, bits, signed, narrow)
    shifted = (x / np.float32(scale)).astype(np.float32) + np.float32(zeropt)
    low, high = integer_range(False, True, bits)
    ties = set(np.unique(shifted[shifted % 1 == 0.5]))
    assert len(ties) >= high - low, sorted(ties)  # nearly every tie is exact in float32 at scale 0.3
    assert np.any(shifted == low) and np.any(shifted == high) and np.any(shifted > high) and np.any(shifted < low)
    q = qonnx_quant_reference(x, np.float32(scale), np.float32(zeropt), bits, signed, narrow, "ROUND")
    levels = set(np.unique(q / np.float32(scale)).round().astype(int))
    assert {low, high} | set(range(low, high + 1, 2)) <= levels, sorted(levels)  # ties round to even levels


@pytest.mark.parametrize("mode", ["CEIL", "FLOOR"])
def test_ceil_and_floor_quant_as_bit_planes(tmp_path, mode):
    path = save(quant_conv_model(0.25, 1.0, 3, 0, 0, mode=mode), tmp_path / "m.onnx")
    report = verify(path, "x86", x=tie_inputs(0.25, 1.0, 3, 0, 0))
    assert report.ok, "\n".join(report.lines())
    assert f"{mode.lower()}) on" in fused_text(report) and "-> multibit_conv2d" in fused_text(report)


def test_half_away_from_zero_rounding_would_fail(tmp_path, monkeypatch):
    """Mutation check: the ties above tell ONNX's half-to-even ``Round`` from half away from zero."""
    path = save(quant_conv_model(0.25, 0.0, 4, 1, 0), tmp_path / "m.onnx")
    x = tie_inputs(0.25, 0.0, 4, 1, 0)
    from tvm import tirx

    def half_away_from_zero(v):
        half, zero = tirx.const(0.5, "float32"), tirx.const(0.0, "float32")
        return tirx.Select(v >= zero, tirx.floor(v + half), tirx.ceil(v - half))

    monkeypatch.setitem(bitserial.ROUNDINGS, "round", half_away_from_zero)
    report = verify(path, "x86", x=x)
    assert "-> multibit_conv2d" in fused_text(report)
    assert not report.ok, "\n".join(report.lines())


def test_alpha_weights_and_thresholds_after_a_quant_conv(tmp_path):
    """±alpha weights (a power-of-two scale s and alpha: the float conv is exact, so the batch
    norm and binarizer after it fold into integer thresholds), then a second Quant after a float
    chain, checked per layer (its segment input quantized again)."""
    g = GraphBuilder([1, 32, 6, 6], seed=4)
    alpha = np.float32(0.5)
    y = g.conv(add_quant(g, "x", 0.25, 0.0, 4, 1, 0), g.binary_weight((32, 32, 3, 3)) * alpha, pad=1)
    y = g.binarize(g.batch_norm(y, *g.random_bn(32, 0.3)))
    y = g.conv(y, g.binary_weight((32, 32, 3, 3)), pad=1)
    y = g.conv(add_quant(g, y, 0.5, 0.0, 2, 0, 0), g.binary_weight((8, 32, 3, 3)), pad=1)
    model = g.model([y])
    model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    path = save(model, tmp_path / "m.onnx")
    report = verify(path, "x86", x=tie_inputs(0.25, 0.0, 4, 1, 0, batch=3), per_layer=True)
    assert report.ok, "\n".join(report.lines())
    fused = fused_text(report)
    assert "-> multibit_conv2d_threshold" in fused and fused.count("-> pack_levels") == 2, fused
    assert report.per_layer is not None and report.per_layer.exact


def test_inspect_says_why_a_quant_stays_float(tmp_path):
    """An 8-bit Quant on 3 channels (an RGB input, Brevitas' CNV) stays float: a float conv is
    faster than 8 planes there. A per-channel scale stays float too, named."""
    path = save(quant_conv_model(0.0078125, 0.0, 8, 1, 0, channels=3), tmp_path / "rgb.onnx")
    quant = next(r for r in inspect_onnx(path) if r.op_type == "Quant")
    assert not quant.binary and "float conv is faster" in quant.note, quant.note
    report = verify(path, "x86", x=tie_inputs(0.0078125, 0.0, 8, 1, 0, channels=3))
    assert report.ok and "multibit" not in fused_text(report)

    g = GraphBuilder([1, 32, 6, 6], seed=5)
    out = g.name("quant")
    scale = g.const(np.full((1, 32, 1, 1), 0.25, np.float32))
    g.nodes.append(helper.make_node("Quant", ["x", scale, g.const(np.float32(0)), g.const(np.float32(4))], [out],
                                    name="per_channel", domain=DOMAIN, signed=1, narrow=0))
    model = g.model([g.conv(out, g.binary_weight((8, 32, 3, 3)), pad=1)])
    model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    path = save(model, tmp_path / "per_channel.onnx")
    quant = next(r for r in inspect_onnx(path) if r.op_type == "Quant")
    assert not quant.binary and "per-channel scale" in quant.note, quant.note


def test_padding_with_the_level_of_zero_matters(tmp_path, monkeypatch):
    """Mutation check: a signed Quant's zero padding is the level ``z - low``; padding with the
    level 0 (the float value ``low * s``) fails on the border outputs."""
    path = save(quant_conv_model(0.25, 0.0, 4, 1, 0), tmp_path / "m.onnx")
    monkeypatch.setattr(bitserial.LevelCode, "pad_level", property(lambda self: 0))
    report = verify(path, "x86", x=tie_inputs(0.25, 0.0, 4, 1, 0))
    assert "-> multibit_conv2d" in fused_text(report)
    assert not report.ok, "\n".join(report.lines())
