"""armv7 NEON (``rasp3b-armv7``): the binary kernels' inner loop accumulates the popcount
with ``vcnt.8`` + ``vpaddl.u8`` + ``vpadal.u16`` (``schedules.arm.pairwise_accumulate``), not
LLVM's ``vpaddl.u16`` + ``vadd.i32`` chain, and the kernels stay exact: they run under
``qemu-arm`` on odd shapes and are compared with numpy.

The aarch64 counterpart (``cnt`` + ``uadalp``, no ``addv``) is in ``tests/test_schedules.py``.
"""

from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pytest
from conftest import (
    binary_conv_ternary_weights_case,
    build,
    conv_case,
    dense_case,
    function_asm,
    loops,
    multibit_conv_case,
    residual_conv_case,
    ternary_conv_case,
    ternary_dense_case,
)

from bnn_tvm import targets
from bnn_tvm.schedules import arm

ARMV7_SPEC = targets.get("rasp3b-armv7")
ARMV7 = ARMV7_SPEC.tvm_target()

CASES = {
    "conv-float": lambda: conv_case(np.random.default_rng(0), 1, 64, 8, 8, 64, 3, 1, 1, threshold=False),
    "conv-threshold": lambda: conv_case(np.random.default_rng(0), 1, 64, 8, 8, 64, 3, 1, 1, threshold=True),
    "dense-float": lambda: dense_case(np.random.default_rng(0), 2, 640, 64, threshold=False),
    "dense-threshold": lambda: dense_case(np.random.default_rng(0), 2, 640, 64, threshold=True),
}


def popcount_loops(asm: str) -> list[str]:
    return [body for body in loops(asm) if re.search(r"\bvcnt\.8\s", body)]


def test_armv7_vector_unit():
    assert arm.vector_unit(ARMV7).name == arm.ARMV7
    assert arm.vector_unit(targets.get("rasp3b").tvm_target()).name == "neon-aarch64"


@pytest.mark.parametrize("name", list(CASES))
def test_armv7_inner_loop_uses_vcnt_and_vpadal(name):
    """Per 32-bit lane word: vcnt.8 (bytes), vpaddl.u8 (-> halfwords), vpadal.u16 (halfword
    pairs added into the u32 accumulator); no vpaddl.u16 + vadd.i32 chain."""
    op, attrs, inputs, compute, _ = CASES[name]()
    scheduled, executable = build(op, attrs, inputs, compute, ARMV7)
    assert "4 lanes" in scheduled.plan and "generic" not in scheduled.plan, scheduled.plan
    asm = function_asm(executable, "main")
    assert "vpaddl.u16" not in asm
    inner = popcount_loops(asm)
    assert inner, "no loop with vcnt.8"
    for body in inner:
        counts = {i: len(re.findall(rf"\b{re.escape(i)}\s", body)) for i in ("vcnt.8", "vpaddl.u8", "vpadal.u16", "vadd.i32")}
        assert counts["vcnt.8"] == counts["vpaddl.u8"] == counts["vpadal.u16"] > 0, counts
        assert counts["vadd.i32"] == 0, counts
        assert re.search(r"vpadal\.u16\s+q\d+, q\d+", body)  # 128-bit vectors: 4 channels


def test_armv7_two_lane_kernels_use_d_registers():
    """70 output channels: 2-lane (64-bit) vectors, the same instructions on d registers."""
    op, attrs, inputs, compute, _ = conv_case(np.random.default_rng(1), 1, 33, 6, 6, 70, 3, 2, 1, threshold=False)
    scheduled, executable = build(op, attrs, inputs, compute, ARMV7)
    assert "2 lanes" in scheduled.plan, scheduled.plan
    inner = popcount_loops(function_asm(executable, "main"))
    assert inner and all(re.search(r"vpadal\.u16\s+d\d+, d\d+", body) for body in inner)


def test_other_targets_are_not_tensorized():
    """aarch64 keeps LLVM's own cnt + uadalp lowering; the float conv has no popcount."""
    op, attrs, inputs, compute, _ = CASES["conv-float"]()
    scheduled, _ = build(op, attrs, inputs, compute, targets.get("rasp3b").tvm_target())
    assert "llvm.arm.neon.vpadalu" not in scheduled.func.script()


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
    # k-bit planes: several shifted popcounts per step, left to LLVM's own lowering
    "multibit-odd-stride2": lambda: multibit_conv_case(np.random.default_rng(20), 2, 2, 33, 9, 7, 70, 3, 2, 1, threshold=False),
    "multibit-threshold": lambda: multibit_conv_case(np.random.default_rng(21), 3, 1, 64, 8, 8, 64, 3, 1, 1, threshold=True),
    # ternary activations or weights: a masked popcount per step, the same NEON accumulation
    "ternary-input": lambda: ternary_conv_case(np.random.default_rng(23), 2, 33, 9, 7, 70, 3, 2, 1),
    "ternary-input-threshold": lambda: ternary_conv_case(np.random.default_rng(24), 1, 64, 8, 8, 64, 3, 1, 1, threshold=True),
    "ternary-weights": lambda: binary_conv_ternary_weights_case(np.random.default_rng(25), 1, 64, 8, 8, 64, 3, 1, 1),
    "ternary-dense": lambda: ternary_dense_case(np.random.default_rng(26), 3, 70, 50),
    # both ternary: two popcounts per step, LLVM's own lowering
    "both-ternary": lambda: ternary_conv_case(np.random.default_rng(27), 1, 40, 8, 8, 48, 3, 1, 0, ternary_weights=True),
}
UNTENSORIZED = {"multibit-odd-stride2", "multibit-threshold", "both-ternary"}  # several popcounts per step

needs_qemu_arm = pytest.mark.skipif(
    shutil.which("qemu-arm") is None or shutil.which("arm-linux-gnueabihf-gcc") is None,
    reason="qemu-arm or arm-linux-gnueabihf-gcc missing: run tools/install_system_deps.sh",
)


@needs_qemu_arm
def test_armv7_kernels_match_numpy_under_qemu_arm(tmp_path):
    from tvm.support import cc

    from bnn_tvm.targets.kernel_check import KernelCall, _write_case, build_runner, run_case

    runner = build_runner(ARMV7_SPEC, str(tmp_path))
    for name, make in EXACT_CASES.items():
        op, attrs, inputs, compute, expected = make()
        scheduled, executable = build(op, attrs, inputs, compute, ARMV7)
        assert "generic" not in scheduled.plan, (name, scheduled.plan)
        assert ("llvm.arm.neon.vpadalu" in scheduled.func.script()) != (name in UNTENSORIZED), name
        library = str(tmp_path / f"{name}.so")
        executable.mod.export_library(library, fcompile=cc.cross_compiler(ARMV7_SPEC.cross_compiler))
        args = [np.ascontiguousarray(a.transpose(scheduled.relayouts[i])) if i in scheduled.relayouts else a
                for i, a in enumerate(inputs)]
        case_dir = str(tmp_path / name)
        _write_case(case_dir, KernelCall("main", args + [np.zeros(expected.shape, expected.dtype)], []))
        run_case(ARMV7_SPEC, runner, library, case_dir)
        got = np.fromfile(os.path.join(case_dir, f"arg{len(args)}.out"), dtype=expected.dtype).reshape(expected.shape)
        np.testing.assert_array_equal(got, expected, err_msg=name)
