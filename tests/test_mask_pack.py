"""``pack_ternary`` of float rows from compare masks (``schedules.mask_pack``, x86): the words equal
the ones ``bitserial.pack_ternary`` defines (numpy, and the kernel ``cpu.pack_rows`` schedules
from it) for signs, zeros, ±0, NaN, ±inf and denormals, with 16 (AVX-512) and 8 (AVX2) lanes;
the schedule takes it only where it applies."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import te

from bnn_tvm import targets
from bnn_tvm.schedules import bitserial, cpu, mask_pack, x86

SPECIALS = np.array([0.0, -0.0, np.nan, -np.nan, np.inf, -np.inf, 1e-45, -1e-45, 1.0, -1.0], np.float32)


def rows_input(rows: int, channels: int) -> np.ndarray:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((rows, channels)).astype(np.float32)
    x[rng.random((rows, channels)) < 0.2] = 0.0
    x.flat[: 4 * len(SPECIALS)] = np.tile(SPECIALS, 4)
    return x


def pack_kernel(rows: int, channels: int, unit, masks: bool):
    x = te.placeholder((rows, channels), "float32", "x")
    func = te.create_prim_func([x, bitserial.pack_ternary(x)]).with_attr("bnn.op", "pack_ternary")
    return cpu.pack_rows(tvm.s_tir.Schedule(func), func, unit, masks=masks)


def run(scheduled, x: np.ndarray) -> np.ndarray:
    lib = tvm.compile(tvm.IRModule({"main": scheduled.func.with_attr("global_symbol", "main")}), targets.get("x86").tvm_target())
    out = tvm.runtime.tensor(np.zeros((x.shape[0], 2 * x.shape[1] // 32), np.uint32))
    lib["main"](tvm.runtime.tensor(x), out)
    return out.numpy()


@pytest.mark.parametrize("rows,channels", [(64, 256), (64, 1024), (3, 64)])
@pytest.mark.parametrize("unit", [cpu.VectorUnit("avx512-vpopcntdq", lanes=16, accumulators=24),
                                  cpu.VectorUnit("avx2", lanes=8, accumulators=12, byte_counters=True)])
def test_mask_words_equal_the_ternary_pack(rows, channels, unit):
    x = rows_input(rows, channels)
    masked = pack_kernel(rows, channels, unit, masks=True)
    assert "compare masks" in masked.plan
    got = run(masked, x)
    np.testing.assert_array_equal(got, mask_pack.reference(x))
    np.testing.assert_array_equal(got, run(pack_kernel(rows, channels, unit, masks=False), x))


def test_applies_only_to_x86_words_without_padding():
    assert mask_pack.applies(x86.vector_unit(targets.get("x86").tvm_target()), 256) == (
        x86.vector_unit(targets.get("x86").tvm_target()).lanes in (8, 16))
    avx2 = cpu.VectorUnit("avx2", lanes=8, accumulators=12)
    assert not mask_pack.applies(avx2, 48)
    assert not mask_pack.applies(cpu.VectorUnit("neon", lanes=4, accumulators=12), 256)
    assert "compare masks" not in pack_kernel(4, 48, avx2, masks=True).plan
