"""The CPU schedules of the binary kernels are exact and generate the intended code.

Every kernel is built the way the passes build it (``schedules.bitserial`` computes, int64
shapes, ``bnn.*`` attributes), scheduled by ``schedules.x86`` / ``schedules.arm``, compiled, and
run on constants permuted the way ``schedule_module`` permutes them. Results are compared with
numpy references computed from the ±1 values (not with the unscheduled TIR), on shapes with
odd channel counts, stride 2, batch 2, padding 0 and 1, and 1x1 kernels.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from conftest import (
    AVX2,
    EPILOGUE,
    RASP3B,
    SKX,
    X86,
    bipolar,
    build,
    check_case,
    conv_case,
    conv_reference,
    dense_case,
    epilogue_consts,
    function_asm,
    loops,
    multibit_conv_case,
    numpy_epilogue,
    packed_decisions,
    positional_conv_case,
    residual_conv_case,
    run,
    unpacked,
)

from bnn_tvm import schedules
from bnn_tvm.relay_passes.common import pack_bits
from bnn_tvm.relay_passes.fuse_binary_conv2d import padding_correction
from bnn_tvm.schedules import bitserial, cpu, x86
from bnn_tvm.schedules.float_conv import float_conv2d


def lanes_of(target) -> int:
    return x86.vector_unit(target).lanes


# ------------------------------------------------------------------------------------------
# Exactness

CONV_SHAPES = [
    # n, c, h, w, oc, k, stride, pad
    (1, 64, 12, 12, 64, 3, 1, 1),  # the reference layer's shape class, tile fits exactly
    (2, 33, 9, 7, 70, 3, 2, 1),  # batch 2, odd channels, stride 2, non-square
    (1, 40, 8, 8, 48, 3, 1, 0),  # unpadded, channels not multiples of 32
    (2, 96, 7, 7, 32, 1, 1, 0),  # 1x1, three input words
    (1, 5, 6, 5, 3, 3, 2, 1),  # tiny channel counts
    (1, 128, 14, 14, 128, 3, 2, 1),  # stage-entry conv of a ResNet
]


@pytest.mark.parametrize("shape", CONV_SHAPES, ids=lambda s: "n{}c{}h{}w{}o{}k{}s{}p{}".format(*s))
@pytest.mark.parametrize("threshold", [False, True], ids=["float", "threshold"])
def test_conv_matches_numpy(shape, threshold, x86_target):
    rng = np.random.default_rng(sum(shape))
    plan = check_case(conv_case(rng, *shape, threshold=threshold), target=x86_target).plan
    lanes = lanes_of(x86_target)
    if shape[4] % lanes == 0:
        assert f"{lanes} lanes" in plan
    if not threshold and shape[4] % lanes == 0:
        assert "register-transposed" in plan
    if shape[4] % lanes == 0:  # full vectors: AVX2 counts in bytes
        assert ("byte counters" in plan) == x86.vector_unit(x86_target).byte_counters, plan


@pytest.mark.parametrize("shape", [
    (1, 64, 6, 6, 32, 3, 1, 1),  # 18 steps: the whole reduction is one chunk
    (1, 256, 5, 5, 16, 3, 1, 1),  # 24 steps per kernel row: one chunk per row
    (1, 992, 4, 4, 8, 3, 1, 0),  # 31 words per tap: one chunk per tap, at the limit
    (1, 2048, 3, 3, 8, 1, 1, 0),  # 64 words: 4 chunks of 16
    (1, 1184, 3, 3, 8, 1, 1, 0),  # 37 words, a prime: chunks of one word
])
@pytest.mark.parametrize("threshold", [False, True], ids=["float", "threshold"])
def test_byte_counters_hold_every_mismatch(shape, threshold):
    """The worst case for byte counters: activations the complement of every weight, so every
    bit mismatches and each byte counter gains 8 per step, up to 248 in a 31-step chunk. A
    chunk of 32 steps would wrap to 0 and the result would be off by 256 per byte."""
    n, c, h, w, oc, k, stride, pad = shape
    rng = np.random.default_rng(17)
    op, attrs, inputs, compute, _ = conv_case(rng, *shape, threshold=threshold)
    values = bipolar(rng, (1, c, 1, 1))
    weight = np.broadcast_to(values, (oc, c, k, k)).copy()  # the same at every tap and channel
    a = np.where(rng.random((n, c, h, w)) < 0.02, values, -values)  # the complement, but for a few matches
    inputs[0] = pack_bits(a.transpose(0, 2, 3, 1))
    inputs[1] = pack_bits(weight.transpose(0, 2, 3, 1))
    inputs[2:5] = padding_correction(weight, (h, w), (stride, stride), (pad,) * 4, (1, 1))
    dot = conv_reference(a, weight, stride, pad)
    if threshold:
        low, high = inputs[5], inputs[6]
        expected = packed_decisions(((dot >= low[:, None, None]) & (dot <= high[:, None, None])).transpose(0, 2, 3, 1))
    else:
        expected = dot.astype(np.float32)
        assert dot.min() <= -(c * k * k) // 2  # most taps really mismatch
    plan = check_case((op, attrs, inputs, compute, expected), target=AVX2).plan
    assert "byte counters" in plan, plan


@pytest.mark.parametrize("threshold", [False, True], ids=["float", "threshold"])
def test_dense_byte_counters_hold_every_mismatch(threshold):
    n, k, o = 3, 64 * 32, 16  # 64 words: 4 chunks of 16 (chunks of 32 steps would wrap)
    rng = np.random.default_rng(18)
    op, attrs, inputs, compute, _ = dense_case(rng, n, k, o, threshold)
    values = bipolar(rng, (1, k))
    a = np.where(rng.random((n, k)) < 0.02, values, -values)
    inputs[0], inputs[1] = pack_bits(a), pack_bits(np.repeat(values, o, axis=0))
    dot = a @ np.repeat(values, o, axis=0).T
    expected = packed_decisions((dot >= inputs[2]) & (dot <= inputs[3])) if threshold else dot.astype(np.float32)
    plan = check_case((op, attrs, inputs, compute, expected), target=AVX2).plan
    assert "byte counters" in plan, plan


@pytest.mark.parametrize("shape", [(1, 32, 9, 9, 40, 3, 1, 2), (2, 33, 10, 9, 20, 3, 2, 1), (1, 64, 12, 12, 64, 3, 1, 0)],
                         ids=lambda s: "n{}c{}h{}w{}o{}k{}s{}p{}".format(*s))
@pytest.mark.parametrize("threshold", [False, True], ids=["float", "threshold"])
def test_dilated_conv_matches_numpy(shape, threshold, x86_target):
    check_case(conv_case(np.random.default_rng(9), *shape, threshold=threshold, dilation=2), target=x86_target)


def test_conv_with_weight_scale_matches_numpy():
    check_case(conv_case(np.random.default_rng(3), 1, 32, 8, 8, 32, 3, 1, 1, threshold=False, scale=True))


MULTIBIT_SHAPES = [
    # bits, n, c, h, w, oc, k, stride, pad
    (2, 1, 64, 12, 12, 64, 3, 1, 1),  # aligned: register-transposed epilogue divided by L
    (3, 2, 33, 9, 7, 70, 3, 2, 1),  # batch 2, odd channels, stride 2, non-square
    (4, 1, 10, 6, 6, 3, 1, 1, 0),  # 1x1, tiny channel counts, 4 planes
]


@pytest.mark.parametrize("shape", MULTIBIT_SHAPES, ids=lambda s: "b{}n{}c{}h{}w{}o{}k{}s{}p{}".format(*s))
@pytest.mark.parametrize("threshold,scale", [(False, False), (False, True), (True, False)], ids=["float", "scaled", "threshold"])
def test_multibit_conv_matches_numpy(shape, threshold, scale, x86_target):
    plan = check_case(multibit_conv_case(np.random.default_rng(sum(shape)), *shape, threshold=threshold, scale=scale), target=x86_target).plan
    if not threshold and shape[5] % 16 == 0:
        assert "register-transposed" in plan


@pytest.mark.parametrize("shape", [CONV_SHAPES[0], CONV_SHAPES[1]], ids=["aligned", "odd"])
@pytest.mark.parametrize("threshold", [False, True], ids=["float", "threshold"])
def test_avx2_schedules_match_numpy(shape, threshold):
    """8-lane vectors (the AVX2 unit): runs on any x86-64 host with AVX2."""
    scheduled = check_case(conv_case(np.random.default_rng(7), *shape, threshold=threshold), target=AVX2)
    assert "16 lanes" not in scheduled.plan


@pytest.mark.parametrize("n,k,o", [(1, 640, 10), (3, 70, 50), (2, 2048, 96), (5, 96, 64)])
@pytest.mark.parametrize("threshold", [False, True], ids=["float", "threshold"])
def test_dense_matches_numpy(n, k, o, threshold, x86_target):
    check_case(dense_case(np.random.default_rng(n * k + o), n, k, o, threshold), target=x86_target)


@pytest.mark.parametrize("shape", [(2, 70, 5, 8), (1, 64, 56, 56), (1, 3, 7, 7)])
def test_pack_sign_matches_numpy(shape, x86_target):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    x[:, :, ::3] = 0.0  # exactly 0 binarizes to +1
    expected = pack_bits(np.where(x >= 0, 1, -1).transpose(0, 2, 3, 1))
    check_case(("pack_sign", {}, [x], bitserial.pack_sign, expected), target=x86_target)


@pytest.mark.parametrize("shape", [(1, 3, 20, 20, 64, 7, 2, 3), (2, 24, 9, 7, 40, 1, 2, 0), (1, 16, 8, 8, 32, 3, 1, 1)],
                         ids=["stem7x7s2", "1x1s2", "3x3"])
def test_float_conv_matches_numpy(shape, x86_target):
    """The float convs around binary layers get the same tile (FMA accumulators)."""
    n, c, h, w, oc, k, stride, pad = shape
    rng = np.random.default_rng(k)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    weight = rng.standard_normal((oc, c, k, k)).astype(np.float32)
    expected = conv_reference(x.astype(np.float64), weight.astype(np.float64), stride, pad)
    case = ("float_conv2d", {}, [x, weight], lambda d, wt: float_conv2d(d, wt, (stride, stride), (pad,) * 4), expected.astype(np.float32))
    op, attrs, inputs, compute, _ = case
    scheduled, executable = build(op, attrs, inputs, compute, x86_target)
    assert "float conv" in scheduled.plan
    got = run(scheduled, executable, inputs, expected.shape, np.float32)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_conv_with_table_lookup_matches_numpy(x86_target):
    """``binary_conv2d_table``: a per-channel float function of the integer result, tabulated."""
    rng = np.random.default_rng(11)
    op, attrs, inputs, _, _ = conv_case(rng, 1, 32, 8, 8, 32, 3, 1, 1, threshold=False)
    taps = attrs["bnn.taps"]
    table = rng.standard_normal((32, 2 * taps + 1)).astype(np.float32)
    dot = conv_reference(unpacked(inputs[0], 32).transpose(0, 3, 1, 2), unpacked(inputs[1], 32).transpose(0, 3, 1, 2), 1, 1)
    expected = table[np.arange(32)[None, :, None, None], dot + taps]

    def compute(d, wt, t, yc, xc, tab):
        conv = bitserial.binary_conv2d_dot(d, wt, bitserial.BorderTable(t, yc, xc), taps, (1, 1), (1, 1, 1, 1))
        return bitserial.table_lookup(conv, tab, taps)

    scheduled = check_case(("binary_conv2d_table", attrs, inputs + [table], compute, expected.astype(np.float32)), target=x86_target)
    assert "table lookups" in scheduled.plan


def test_dense_with_table_lookup_matches_numpy(x86_target):
    rng = np.random.default_rng(12)
    op, attrs, inputs, _, _ = dense_case(rng, 2, 200, 48, threshold=False)
    taps = attrs["bnn.taps"]
    table = rng.standard_normal((48, 2 * taps + 1)).astype(np.float32)
    dot = unpacked(inputs[0], 200) @ unpacked(inputs[1], 200).T
    expected = table[np.arange(48)[None, :], dot + taps]

    def compute(d, w, tab):
        return bitserial.table_lookup(bitserial.binary_dense_dot(d, w, taps), tab, taps)

    check_case(("binary_dense_table", attrs, inputs + [table], compute, expected.astype(np.float32)), target=x86_target)


@pytest.mark.parametrize("n,c,h,w,oc,stride,pad", [(1, 64, 8, 8, 64, 1, 1), (2, 33, 7, 7, 19, 2, 1)])
def test_conv_with_float_epilogue_matches_numpy(n, c, h, w, oc, stride, pad, x86_target):
    """``binary_conv2d_epilogue``: per-channel float ops on the tile, each rounded like the float
    graph (no FMA), NCHW out; odd channels, stride 2, batch 2 take the other tile paths."""
    rng = np.random.default_rng(13)
    op, attrs, inputs, _, _ = conv_case(rng, n, c, h, w, oc, 3, stride, pad, threshold=False)
    taps = attrs["bnn.taps"]
    consts = epilogue_consts(rng, oc)
    dot = conv_reference(unpacked(inputs[0], c).transpose(0, 3, 1, 2), unpacked(inputs[1], c).transpose(0, 3, 1, 2), stride, pad)
    expected = numpy_epilogue(dot, consts, channel_axis=1)

    def compute(d, wt, t, yc, xc, *cs):
        conv = bitserial.binary_conv2d_dot(d, wt, bitserial.BorderTable(t, yc, xc), taps, (stride, stride), (pad,) * 4)
        return bitserial.dot_to_float_nchw(conv, *cs, steps=EPILOGUE)

    attrs = {**attrs, "bnn.epilogue": ",".join(EPILOGUE)}
    scheduled = check_case(("binary_conv2d_epilogue", attrs, inputs + consts, compute, expected), target=x86_target)
    if oc % 16 == 0:
        assert "register-transposed" in scheduled.plan, scheduled.plan


def test_dense_with_float_epilogue_matches_numpy(x86_target):
    rng = np.random.default_rng(14)
    op, attrs, inputs, _, _ = dense_case(rng, 2, 200, 48, threshold=False)
    taps = attrs["bnn.taps"]
    consts = epilogue_consts(rng, 48)
    expected = numpy_epilogue(unpacked(inputs[0], 200) @ unpacked(inputs[1], 200).T, consts, channel_axis=1)

    def compute(d, w, *cs):
        return bitserial.dot_to_float_nchw(bitserial.binary_dense_dot(d, w, taps), *cs, steps=EPILOGUE)

    attrs = {**attrs, "bnn.epilogue": ",".join(EPILOGUE)}
    check_case(("binary_dense_epilogue", attrs, inputs + consts, compute, expected), target=x86_target)


@pytest.mark.parametrize("n,c,h,w,oc,stride,pad", [(1, 64, 8, 8, 64, 1, 1), (2, 33, 7, 7, 19, 2, 1), (1, 64, 7, 7, 32, 1, 1)])
@pytest.mark.parametrize("rprelu", [False, True], ids=["residual", "residual-rprelu"])
def test_conv_with_residual_epilogue_matches_numpy(n, c, h, w, oc, stride, pad, rprelu, x86_target):
    scheduled = check_case(residual_conv_case(np.random.default_rng(15), n, c, h, w, oc, stride, pad, rprelu), target=x86_target)
    if oc % 16 == 0:
        assert "register-transposed" in scheduled.plan, scheduled.plan


@pytest.mark.parametrize("n,c,h,w,oc,stride,pad", [(1, 16, 16, 16, 16, 1, 1), (2, 33, 9, 7, 32, 2, 1), (1, 20, 6, 5, 12, 1, 1)])
@pytest.mark.parametrize("residual", [False, True], ids=["scales", "scales-residual"])
def test_conv_with_positional_epilogue_matches_numpy(n, c, h, w, oc, stride, pad, residual, x86_target, monkeypatch):
    """XNOR++'s per-row and per-column output scales and a per-position bias in the epilogue:
    after the register transpose each is read at its row, column and channel, in the graph's order."""
    monkeypatch.setenv("BNN_STRICT_SCHEDULES", "1")  # a tile epilogue that fails to tensorize is an error
    scheduled = check_case(positional_conv_case(np.random.default_rng(16), n, c, h, w, oc, stride, pad, residual),
                           target=x86_target)
    if oc % 16 == 0 and w % 4 == 0:
        assert "register-transposed" in scheduled.plan, scheduled.plan


def test_positional_tile_epilogue_names_round_trip(monkeypatch):
    """A stored tuning record names the tile epilogue's intrinsic; a new process rebuilds it from
    the name alone, positional steps included."""
    from bnn_tvm.schedules import tuning

    steps = ("multiply", bitserial.positional_step("multiply", "y"), bitserial.positional_step("add", "cyx"), "residual")
    name = cpu.tile_out_intrin(8, 16, steps, "int64")
    rebuilt = []
    monkeypatch.setattr(cpu, "register_intrinsic", lambda n, funcs: funcs())
    monkeypatch.setattr(cpu, "_tile_out_funcs", lambda rows, lanes, steps, *rest: rebuilt.append((rows, lanes, steps)))
    tuning.register_intrinsic_named(name)
    assert rebuilt == [(8, 16, steps)]


def test_unscheduled_shapes_fall_back_exactly(monkeypatch):
    """A kernel the fast schedule does not take still compiles to the exact compute."""
    monkeypatch.setattr(cpu, "KERNELS", {})
    case = conv_case(np.random.default_rng(5), 1, 16, 5, 5, 8, 3, 1, 1, threshold=True)
    assert "generic" in check_case(case, fast=False).plan


def test_interleave_transpose_recipe():
    """The shuffle recipe of the float epilogue really transposes, for every unit width."""
    for lanes, rows in [(16, 8), (16, 4), (16, 16), (8, 8), (8, 4), (4, 4)]:
        tile = [[(x, o) for o in range(lanes)] for x in range(rows)]
        columns = cpu.quad_transpose(tile, lanes, lambda vectors, idx: [sum(vectors, [])[k] for k in idx])
        assert columns == [[(x, o) for x in range(rows)] for o in range(lanes)]


# ------------------------------------------------------------------------------------------
# Generated code


def test_avx512_without_vpopcntdq_counts_bytes_in_zmm_registers():
    """AVX-512 without VPOPCNTDQ (Skylake-SP): 16-lane tiles, nibble tables in zmm registers,
    byte counts added as they come. Compiled only: runs on any host."""
    case = conv_case(np.random.default_rng(0), 1, 64, 8, 8, 64, 3, 1, 1, threshold=False)
    scheduled, executable = build(*case[:4], SKX)
    assert "16 lanes" in scheduled.plan and "byte counters" in scheduled.plan, scheduled.plan
    asm = function_asm(executable, "main")
    inner = [body for body in loops(asm) if "vpshufb" in body and "zmm" in body]
    assert inner and "vpopcnt" not in asm
    assert not [body for body in inner if re.search(r"vpsadbw|vpunpck|vpackus", body)]


def test_avx512_conv_uses_vpopcntd_and_mask_packing():
    case = conv_case(np.random.default_rng(0), 1, 64, 8, 8, 64, 3, 1, 1, threshold=True)
    _, executable = build(*case[:4], X86)
    asm = function_asm(executable, "main")
    inner = [body for body in loops(asm) if "vpopcntd" in body]
    assert inner, "no loop with vpopcntd"
    assert any(re.search(r"vpxord\s+.*%zmm", body) and re.search(r"vpaddd\s+.*%zmm", body) for body in inner)
    assert "kmovw" in asm or "kmovd" in asm  # threshold words packed from compare masks


@pytest.mark.parametrize("byte_counters", [True, False], ids=["bytes", "words"])
def test_avx2_conv_uses_nibble_table_popcount(byte_counters, monkeypatch):
    """The inner loop looks bytes up in a nibble table; with byte counters it adds the byte
    counts as they are (no ``vpsadbw``/unpack widening to 32 bits per step)."""
    if not byte_counters:
        unit = x86.vector_unit(AVX2)
        monkeypatch.setattr(x86, "vector_unit", lambda target: dataclasses.replace(unit, byte_counters=False))
    case = conv_case(np.random.default_rng(0), 1, 64, 8, 8, 64, 3, 1, 1, threshold=False)
    _, executable = build(*case[:4], AVX2)
    asm = function_asm(executable, "main")
    assert "vpopcnt" not in asm and "zmm" not in asm
    inner = [body for body in loops(asm) if "vpshufb" in body and "ymm" in body]
    assert inner
    widening = [body for body in inner if re.search(r"vpsadbw|vpunpck|vpackus|vpmaddubsw", body)]
    assert (not widening) == byte_counters


@pytest.mark.parametrize("threshold", [False, True], ids=["float", "threshold"])
def test_rasp3b_conv_uses_cnt_and_uadalp_without_addv(threshold):
    """Cortex-A53 (aarch64): vector popcount with widening pairwise accumulation."""
    case = conv_case(np.random.default_rng(0), 1, 64, 8, 8, 64, 3, 1, 1, threshold=threshold)
    scheduled, executable = build(*case[:4], RASP3B)
    assert "4 lanes" in scheduled.plan
    asm = function_asm(executable, "main")
    # the popcount loops; where the tile loop is gone (one tile, its chunk unrolled: aarch64's
    # ``cpu.unroll_taps``), the whole function: no scalar popcount (``cnt .8b`` + ``addv``) there
    inner = [body for body in loops(asm) if re.search(r"\bcnt\s+v\d+\.16b", body)]
    for body in inner or [asm]:
        assert "uadalp" in body and re.search(r"\bcnt\s+v\d+\.16b", body), body
        assert not re.search(r"\bcnt\s+v\d+\.8b", body) and (not inner or "addv" not in body), body


def test_schedule_module_relayouts_constants_at_compile_time(tmp_path, monkeypatch):
    """End to end through the Relax module: weights change layout once, results stay exact."""
    import onnx

    from bnn_tvm.measure.bench.layers import LayerSpec
    from bnn_tvm.compilation.compiler import compile_onnx
    from bnn_tvm.compilation.runtime import CompiledRunner

    spec = LayerSpec.parse("conv3x3:32x6x6,out=48,stride=2")
    path = str(tmp_path / "layer.onnx")
    onnx.save(spec.onnx_model(), path)
    plans = {}
    original = schedules.schedule_module
    monkeypatch.setattr(schedules, "schedule_module", lambda mod, target_spec: original(mod, target_spec, plans))
    compiled = compile_onnx(path, "x86")
    assert any(plan.startswith("conv:") for plan in plans.values()), plans
    x = np.random.default_rng(0).standard_normal(spec.input_shape).astype(np.float32)
    got = CompiledRunner(compiled.executable).run(x)[0]
    expected = conv_reference(np.where(x >= 0, 1, -1).astype(np.int64), spec.weights().astype(np.int64), 2, 1)
    np.testing.assert_array_equal(got, expected.astype(np.float32))


@pytest.mark.parametrize("shape, threshold, expect_parallel", [
    ((1, 5, 6, 5, 3, 3, 2, 1), False, False),  # a few hundred popcounts: one core, no thread-pool wake-up
    ((1, 32, 8, 8, 64, 3, 1, 1), True, False),  # the digits model's conv (36,864 words)
    ((1, 128, 14, 14, 128, 3, 2, 1), False, True),  # a ResNet stage-entry conv
    ((1, 64, 12, 12, 64, 3, 1, 1), True, True),
])
def test_only_kernels_with_enough_work_run_in_parallel(shape, threshold, expect_parallel, x86_target):
    """A parallel launch costs more than a tiny kernel takes; the schedules keep those serial
    (``cpu.PARALLEL_MIN_TILE_WORK``) and run the rest on all cores, exact either way."""
    scheduled = check_case(conv_case(np.random.default_rng(5), *shape, threshold=threshold), target=x86_target)
    assert ("T.parallel" in scheduled.func.script()) == expect_parallel, scheduled.plan
