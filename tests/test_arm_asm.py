"""NEON (``rasp3b-armv7``, ``rasp3b``): the binary kernels' inner loop counts mismatches in
halfword counters (``schedules.cpu.count_mismatches``): ``vcnt.8`` + ``vpadal.u8`` on armv7,
``cnt .16b`` + ``uadalp .8h`` on aarch64, one accumulating pairwise add per 128 bits and step,
widened to 32 bits once per chunk; and the kernels stay exact: they run under ``qemu-arm`` /
``qemu-aarch64 -cpu cortex-a53`` on odd shapes and on reductions that fill the 16-bit counters
to their limit, and are compared with numpy.
"""

from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pytest
from conftest import (
    HOST_X86,
    binary_conv_ternary_weights_case,
    bipolar,
    build,
    conv_case,
    dense_case,
    function_asm,
    packed_decisions,
    loops,
    multibit_conv_case,
    positional_conv_case,
    residual_conv_case,
    run,
    ternary_conv_case,
    ternary_dense_case,
)

from bnn_tvm import targets
from bnn_tvm.relay_passes.common import pack_bits
from bnn_tvm.schedules import arm, cpu
from bnn_tvm.schedules.float_conv import float_conv2d

ARMV7_SPEC = targets.get("rasp3b-armv7")
ARMV7 = ARMV7_SPEC.tvm_target()
AARCH64_SPEC = targets.get("rasp3b")
AARCH64 = AARCH64_SPEC.tvm_target()

CASES = {
    "conv-float": lambda: conv_case(np.random.default_rng(0), 1, 64, 8, 8, 64, 3, 1, 1, threshold=False),
    "conv-threshold": lambda: conv_case(np.random.default_rng(0), 1, 64, 8, 8, 64, 3, 1, 1, threshold=True),
    "dense-float": lambda: dense_case(np.random.default_rng(0), 2, 640, 64, threshold=False),
    "dense-threshold": lambda: dense_case(np.random.default_rng(0), 2, 640, 64, threshold=True),
}

CHUNK_STEPS = {"conv-float": 18, "conv-threshold": 18, "dense-float": 20, "dense-threshold": 20}  # words x taps


def popcount_loops(asm: str) -> list[str]:
    return [body for body in loops(asm) if re.search(r"\bvcnt\.8\s", body)]


def test_armv7_vector_unit():
    assert arm.vector_unit(ARMV7).name == arm.ARMV7
    assert arm.vector_unit(targets.get("rasp3b").tvm_target()).name == "neon-aarch64"


@pytest.mark.parametrize("name", list(CASES))
def test_armv7_inner_loop_uses_vcnt_and_vpadal_u8(name):
    """Per 32-bit lane word and step: vcnt.8 (bytes), vpadal.u8 (byte pairs added into the
    halfword counters); no vpaddl.u8 + vpadal.u16 widening in the loop (once per chunk after
    it), no vpaddl.u16 + vadd.i32 chain."""
    op, attrs, inputs, compute, _ = CASES[name]()
    scheduled, executable = build(op, attrs, inputs, compute, ARMV7)
    assert "4 lanes" in scheduled.plan and "halfword counters" in scheduled.plan, scheduled.plan
    asm = function_asm(executable, "main")
    assert "vpaddl.u16" not in asm
    inner = popcount_loops(asm)
    assert inner, "no loop with vcnt.8"
    for body in inner:
        counts = {i: len(re.findall(rf"\b{re.escape(i)}\s", body))
                  for i in ("vcnt.8", "vpadal.u8", "vpaddl.u8", "vpadal.u16", "vadd.i32")}
        assert counts["vcnt.8"] == counts["vpadal.u8"] > 0, counts
        assert counts["vpaddl.u8"] == counts["vpadal.u16"] == counts["vadd.i32"] == 0, counts
        assert re.search(r"vpadal\.u8\s+q\d+, q\d+", body)  # 128-bit vectors: 4 channels
    assert re.search(r"vpadal\.u16\s+q\d+, q\d+", asm)  # the chunk's widening, after the loop


def test_armv7_two_lane_kernels_use_d_registers():
    """70 output channels: 2-lane (64-bit) vectors, the same instructions on d registers."""
    op, attrs, inputs, compute, _ = conv_case(np.random.default_rng(1), 1, 33, 6, 6, 70, 3, 2, 1, threshold=False)
    scheduled, executable = build(op, attrs, inputs, compute, ARMV7)
    assert "2 lanes" in scheduled.plan and "halfword counters" in scheduled.plan, scheduled.plan
    inner = popcount_loops(function_asm(executable, "main"))
    assert inner and all(re.search(r"vpadal\.u8\s+d\d+, d\d+", body) for body in inner)


def aarch64_popcount_loops(asm: str) -> list[str]:
    return [body for body in loops(asm) if re.search(r"\bcnt\s+v\d+\.(16|8)b", body)]


@pytest.mark.parametrize("name", list(CASES))
def test_aarch64_inner_loop_accumulates_halfwords(name):
    """Cortex-A53 (aarch64): per 128 bits and step ``eor``, ``cnt .16b`` and ``uadalp .8h``
    (byte pairs into halfword counters): no ``uaddlp`` + ``uadalp .4s`` widening in the loop,
    no ``addv``; the ``.4s`` widening once per chunk, after it."""
    op, attrs, inputs, compute, _ = CASES[name]()
    scheduled, executable = build(op, attrs, inputs, compute, AARCH64)
    assert "4 lanes" in scheduled.plan and "halfword counters" in scheduled.plan, scheduled.plan
    asm = function_asm(executable, "main")
    # the popcount loops; a tile loop of one iteration leaves the unrolled chunk in no loop
    inner = aarch64_popcount_loops(asm) or [asm]
    for body in inner:
        cnts = len(re.findall(r"\bcnt\s+v\d+\.16b", body))
        halfwords = len(re.findall(r"\buadalp\s+v\d+\.8h, v\d+\.16b", body))
        # a whole chunk unrolled in the loop (aarch64, few steps: ``cpu.unroll_taps``): its first
        # step adds into zeroed counters (``uaddlp .8h``), its end widens each counter once
        first = len(re.findall(r"\buaddlp\s+v\d+\.8h, v\d+\.16b", body))
        widenings = len(re.findall(r"\b(?:uaddlp|uadalp)\s+v\d+\.4s, v\d+\.8h", body))
        assert cnts == halfwords + first and halfwords > 0, body
        assert not re.search(r"\bcnt\s+v\d+\.8b", body), body  # no scalar popcount (cnt .8b + addv)
        assert body is asm or not re.search(r"\baddv\s", body), body  # (a threshold's bit packing has one)
        assert widenings * CHUNK_STEPS[name] <= cnts, body  # a counter widened once per chunk, not per step
    assert re.search(r"\b(uaddlp|uadalp)\s+v\d+\.4s, v\d+\.8h", asm)  # the chunk's widening (into zero: uaddlp)


def test_aarch64_two_lane_kernels_use_64_bit_vectors():
    op, attrs, inputs, compute, _ = conv_case(np.random.default_rng(1), 1, 33, 6, 6, 70, 3, 2, 1, threshold=False)
    scheduled, executable = build(op, attrs, inputs, compute, AARCH64)
    assert "2 lanes" in scheduled.plan and "halfword counters" in scheduled.plan, scheduled.plan
    inner = aarch64_popcount_loops(function_asm(executable, "main"))
    assert inner and all(re.search(r"\buadalp\s+v\d+\.4h, v\d+\.8b", body) for body in inner)


def test_other_kernels_keep_32_bit_counters():
    """k-bit convs (several weighted popcounts per step) keep 32-bit counters."""
    op, attrs, inputs, compute, _ = multibit_conv_case(np.random.default_rng(21), 3, 1, 64, 8, 8, 64, 3, 1, 1,
                                                       threshold=True)
    for target in (AARCH64, ARMV7):
        scheduled, _ = build(op, attrs, inputs, compute, target)
        assert "halfword counters" not in scheduled.plan, scheduled.plan


def test_halfword_chunks_stay_below_65536():
    assert cpu.MAX_HALFWORD_CHUNK_STEPS * 16 < 2**16 <= (cpu.MAX_HALFWORD_CHUNK_STEPS + 1) * 16
    assert cpu.halfword_chunk_steps("both_ternary") * 2 * 16 < 2**16


# ------------------------------------------------------------------------------------------
# Exactness under qemu-arm

EXACT_CASES = {
    "conv-aligned": lambda: conv_case(np.random.default_rng(12), 1, 64, 12, 12, 64, 3, 1, 1, threshold=False),
    "conv-odd-stride2": lambda: conv_case(np.random.default_rng(13), 2, 33, 9, 7, 70, 3, 2, 1, threshold=False),
    "conv-threshold": lambda: conv_case(np.random.default_rng(14), 1, 64, 12, 12, 64, 3, 1, 1, threshold=True),
    "conv-threshold-odd": lambda: conv_case(np.random.default_rng(15), 1, 40, 8, 8, 48, 3, 1, 0, threshold=True),
    "conv-1x1": lambda: conv_case(np.random.default_rng(16), 2, 96, 7, 7, 32, 1, 1, 0, threshold=False),
    "conv-residual": lambda: residual_conv_case(np.random.default_rng(19), 1, 64, 8, 8, 32, 1, 1),
    "conv-residual-rprelu": lambda: residual_conv_case(np.random.default_rng(22), 1, 64, 8, 8, 32, 1, 1, rprelu=True),
    "dense": lambda: dense_case(np.random.default_rng(17), 3, 70, 50, threshold=False),
    "dense-threshold": lambda: dense_case(np.random.default_rng(18), 2, 2048, 96, threshold=True),
    # k-bit planes: several shifted popcounts per step, 32-bit counters
    "multibit-odd-stride2": lambda: multibit_conv_case(np.random.default_rng(20), 2, 2, 33, 9, 7, 70, 3, 2, 1, threshold=False),
    "multibit-threshold": lambda: multibit_conv_case(np.random.default_rng(21), 3, 1, 64, 8, 8, 64, 3, 1, 1, threshold=True),
    # ternary activations or weights: a masked popcount per step, the same halfword counters
    "ternary-input": lambda: ternary_conv_case(np.random.default_rng(23), 2, 33, 9, 7, 70, 3, 2, 1),
    "ternary-input-threshold": lambda: ternary_conv_case(np.random.default_rng(24), 1, 64, 8, 8, 64, 3, 1, 1, threshold=True),
    "ternary-weights": lambda: binary_conv_ternary_weights_case(np.random.default_rng(25), 1, 64, 8, 8, 64, 3, 1, 1),
    "ternary-dense": lambda: ternary_dense_case(np.random.default_rng(26), 3, 70, 50),
    # both ternary: two popcounts per step (32 - term), two pairwise adds into the halfwords
    "both-ternary": lambda: ternary_conv_case(np.random.default_rng(27), 1, 40, 8, 8, 48, 3, 1, 0, ternary_weights=True),
}


def all_mismatch_dense_case(rng, n, words, o, threshold):
    """A dense whose activations are the complement of every weight row but for a few bits:
    every halfword counter gains (nearly) 16 per step, up to 65520 in a chunk of 4095 steps."""
    k = 32 * words
    op, attrs, inputs, compute, _ = dense_case(rng, n, k, o, threshold)
    values = bipolar(rng, (1, k))
    a = np.where(rng.random((n, k)) < 0.0005, values, -values)
    weight = np.repeat(values, o, axis=0)
    inputs[0], inputs[1] = pack_bits(a), pack_bits(weight)
    dot = a @ weight.T
    assert dot.max() < -(k * 99) // 100  # nearly every bit mismatches
    expected = packed_decisions((dot >= inputs[2]) & (dot <= inputs[3])) if threshold else dot.astype(np.float32)
    return op, attrs, inputs, compute, expected


def all_mismatch_conv_case(rng, n, c, h, w, oc, k):
    """A conv whose activations are the complement of every weight but for a few bits (unpadded:
    every tap counts)."""
    from bnn_tvm.relay_passes.fuse_binary_conv2d import padding_correction

    from conftest import conv_reference

    op, attrs, inputs, compute, _ = conv_case(rng, n, c, h, w, oc, k, 1, 0, threshold=False)
    values = bipolar(rng, (1, c, 1, 1))
    weight = np.broadcast_to(values, (oc, c, k, k)).copy()
    a = np.where(rng.random((n, c, h, w)) < 0.0005, values, -values)
    inputs[0] = pack_bits(a.transpose(0, 2, 3, 1))
    inputs[1] = pack_bits(weight.transpose(0, 2, 3, 1))
    inputs[2:5] = padding_correction(weight, (h, w), (1, 1), (0,) * 4, (1, 1))
    dot = conv_reference(a, weight, 1, 0)
    assert dot.max() < -(c * k * k * 99) // 100
    return op, attrs, inputs, compute, dot.astype(np.float32)


# Reductions that fill the halfword counters: a chunk of 4095 steps reaches 65520 in a counter;
# a chunk of 4096 would wrap to 0 and the result would be off by 65536 per counter.
LIMIT_CASES = {
    "dense-4095-words": lambda: all_mismatch_dense_case(np.random.default_rng(30), 2, 4095, 8, threshold=False),
    "dense-4095-words-threshold": lambda: all_mismatch_dense_case(np.random.default_rng(31), 1, 4095, 32, threshold=True),
    "dense-8190-words": lambda: all_mismatch_dense_case(np.random.default_rng(32), 1, 8190, 8, threshold=False),  # 2 chunks
    "dense-4097-words": lambda: all_mismatch_dense_case(np.random.default_rng(33), 1, 4097, 8, threshold=False),  # 17 x 241
    "conv-4095-steps": lambda: all_mismatch_conv_case(np.random.default_rng(34), 1, 455 * 32, 3, 3, 8, 3),  # 9 taps x 455 words
}
LIMIT_CHUNKS = {"dense-4095-words": 4095, "dense-4095-words-threshold": 4095, "dense-8190-words": 4095,
                "dense-4097-words": 241, "conv-4095-steps": 4095}
UNTENSORIZED = {"multibit-odd-stride2", "multibit-threshold"}  # several weighted popcounts per step

needs_qemu = {
    "rasp3b-armv7": pytest.mark.skipif(
        shutil.which("qemu-arm") is None or shutil.which("arm-linux-gnueabihf-gcc") is None,
        reason="qemu-arm or arm-linux-gnueabihf-gcc missing: run tools/install_system_deps.sh"),
    "rasp3b": pytest.mark.skipif(
        shutil.which("qemu-aarch64") is None or shutil.which("aarch64-linux-gnu-gcc") is None,
        reason="qemu-aarch64 or aarch64-linux-gnu-gcc missing: run tools/install_system_deps.sh"),
}
PAIRWISE_INTRINSIC = {"rasp3b-armv7": "llvm.arm.neon.vpadalu", "rasp3b": "llvm.aarch64.neon.uaddlp"}


def check_under_qemu(spec, cases: dict, tmp_path) -> dict:
    """Build each case for ``spec``, run its kernel under qemu and compare with numpy; the plans."""
    from tvm.support import cc

    from bnn_tvm.targets.kernel_check import KernelCall, _write_case, build_runner, run_case

    runner = build_runner(spec, str(tmp_path))
    plans = {}
    for name, make in cases.items():
        op, attrs, inputs, compute, expected = make()
        scheduled, executable = build(op, attrs, inputs, compute, spec.tvm_target())
        assert "generic" not in scheduled.plan, (name, scheduled.plan)
        plans[name] = scheduled
        library = str(tmp_path / f"{name}.so")
        executable.mod.export_library(library, fcompile=cc.cross_compiler(spec.cross_compiler))
        args = [np.ascontiguousarray(a.transpose(scheduled.relayouts[i])) if i in scheduled.relayouts else a
                for i, a in enumerate(inputs)]
        case_dir = str(tmp_path / name)
        _write_case(case_dir, KernelCall("main", args + [np.zeros(expected.shape, expected.dtype)], []))
        run_case(spec, runner, library, case_dir)
        got = np.fromfile(os.path.join(case_dir, f"arg{len(args)}.out"), dtype=expected.dtype).reshape(expected.shape)
        np.testing.assert_array_equal(got, expected, err_msg=name)
    return plans


@pytest.mark.parametrize("target", [pytest.param(t, marks=needs_qemu[t]) for t in ("rasp3b-armv7", "rasp3b")])
def test_kernels_match_numpy_under_qemu(target, tmp_path):
    plans = check_under_qemu(targets.get(target), EXACT_CASES, tmp_path)
    for name, scheduled in plans.items():
        assert ("halfword counters" in scheduled.plan) != (name in UNTENSORIZED), (name, scheduled.plan)
        assert (PAIRWISE_INTRINSIC[target] in scheduled.func.script()) != (name in UNTENSORIZED), name


@pytest.mark.parametrize("target", [pytest.param(t, marks=needs_qemu[t]) for t in ("rasp3b-armv7", "rasp3b")])
def test_positional_epilogue_matches_numpy_under_qemu(target, tmp_path):
    """XNOR++'s per-row and per-column output scales and a per-position bias in the NEON tile
    epilogue (after its register transpose, on vectors of positions), run on the CPU model."""
    cases = {"scales": lambda: positional_conv_case(np.random.default_rng(16), 1, 16, 8, 8, 16, 1, 1),
             "scales-residual": lambda: positional_conv_case(np.random.default_rng(17), 1, 20, 6, 8, 8, 1, 1, True)}
    plans = check_under_qemu(targets.get(target), cases, tmp_path)
    assert all("register-transposed" in scheduled.plan for scheduled in plans.values()), plans


@pytest.mark.parametrize("target", [pytest.param(t, marks=needs_qemu[t]) for t in ("rasp3b-armv7", "rasp3b")])
def test_halfword_counters_hold_every_mismatch_under_qemu(target, tmp_path, monkeypatch):
    """The worst case for halfword counters: nearly every bit mismatches, 16 per counter and
    step, in chunks of up to 4095 steps (the last before a counter could wrap)."""
    chunks = []
    original = cpu.chunk_loop

    def recording(sch, reduce, max_steps=cpu.MAX_CHUNK_STEPS):
        loop, steps = original(sch, reduce, max_steps)
        chunks.append(steps)
        return loop, steps

    monkeypatch.setattr(cpu, "chunk_loop", recording)
    plans = check_under_qemu(targets.get(target), LIMIT_CASES, tmp_path)  # builds the cases in order
    assert all("halfword counters" in scheduled.plan for scheduled in plans.values()), plans
    assert chunks == [LIMIT_CHUNKS[name] for name in LIMIT_CASES], chunks


# Bi-Real's downsampling shortcut convs on ARM: 1x1 stride 1 over 14- and 7-wide rows, with a
# batch norm's steps in the epilogue; and a batch of 2 without an epilogue, 25 positions padded
# to 28 (batch, channels, rows, columns, output channels, epilogue steps)
BN_STEPS = ("add", "multiply", "add")
POINTWISE_ACROSS_ROWS = {"14-wide": (1, 32, 14, 14, 48, BN_STEPS), "7-wide-padded": (1, 24, 7, 7, 32, BN_STEPS),
                         "5-wide-batch-2": (2, 16, 5, 5, 16, ())}


def pointwise_case(shape, across_rows: bool, expected=None):
    """A pointwise float conv with its epilogue steps; ``expected`` the output, if known."""
    n, c, h, w, oc, steps = shape
    rng = np.random.default_rng(h)
    inputs = [rng.standard_normal((n, c, h, w)).astype(np.float32), rng.standard_normal((oc, c, 1, 1)).astype(np.float32),
              *(rng.standard_normal(oc).astype(np.float32) for _ in steps)]

    def compute(d, wt, *consts):
        return float_conv2d(d, wt, (1, 1), (0,) * 4, *consts, steps=steps, across_rows=across_rows)

    return "float_conv2d", {"bnn.epilogue": ",".join(steps)} if steps else {}, inputs, compute, expected


@pytest.mark.parametrize("target", [pytest.param(t, marks=needs_qemu[t]) for t in ("rasp3b-armv7", "rasp3b")])
def test_pointwise_conv_across_rows_matches_x86_per_row_tiles_under_qemu(target, tmp_path):
    """ARM's pointwise convs tile the flattened (7x7: zero-padded to 52) positions in 4 x 16 (armv7:
    4 x 8) tiles across rows; each output is the same sum over channels, in order, as x86's
    per-row tiles compute it: bit for bit the same floats, the batch norm included."""
    cases = {}
    for name, shape in POINTWISE_ACROSS_ROWS.items():
        op, attrs, inputs, compute, _ = pointwise_case(shape, across_rows=False)
        scheduled, executable = build(op, attrs, inputs, compute, HOST_X86)
        assert "flattened" not in scheduled.plan
        n, _, h, w, oc, _ = shape
        per_row = run(scheduled, executable, inputs, (n, oc, h, w), np.float32)
        cases[name] = lambda shape=shape, per_row=per_row: pointwise_case(shape, True, per_row)
    plans = check_under_qemu(targets.get(target), cases, tmp_path)
    for name, scheduled in plans.items():
        assert "4 positions" in scheduled.plan and "positions flattened" in scheduled.plan, (name, scheduled.plan)
