"""A TTQ conv's ``b * P - a * N`` in the conv kernel (``FuseTtqDifference``,
``bitserial.ttq_conv2d_float``): no difference kernel is left for a conv, and the fused kernel's
outputs are bit-identical to the two kernels it replaces (the halves ``b * P``, ``a * N``, then
their difference and its steps), on each x86 unit, in whole models from both of PyTorch's
exporters, and on aarch64 under qemu."""

from __future__ import annotations

import re
import shutil
import warnings

import numpy as np
import pytest
from conftest import build, conv_reference, run, ternary, weight_planes, words_of
from onnx_builders import save, ttq, ttq_graph
from published_bnn import export, resnet

from bnn_tvm.compilation.compiler import compile_onnx, lower_onnx
from bnn_tvm.compilation.runtime import CompiledRunner
from bnn_tvm.relay_passes import pipeline
from bnn_tvm.relay_passes.analysis.weights import DIFFERENCE, halves_order, split_asymmetric
from bnn_tvm.schedules import bitserial

STEPS = ("multiply", "add", bitserial.RESIDUAL)  # a batch norm, then the shortcut


def two_kernel_reference(a, weight, stride, pad, scale, shift, residual):
    """What the halves kernel and the difference kernel compute, in float32 op by op: ``float(P)
    * b`` and ``float(N) * a`` (each rounded: the halves' outputs), their difference, ``* s``,
    ``+ t``, ``+ residual``."""
    weights = split_asymmetric(weight)
    p = conv_reference(a, weights.positive.astype(np.int64), stride, pad).astype(np.float32)
    n = conv_reference(a, weights.negative.astype(np.int64), stride, pad).astype(np.float32)
    column = lambda v: v[:, None, None]  # noqa: E731
    difference = p * column(weights.plus) - n * column(weights.minus)
    return (difference * column(scale) + column(shift)) + residual


@pytest.mark.parametrize("c,oc,hw,stride", [(16, 16, 8, 1), (24, 48, 6, 1), (16, 24, 7, 2), (8, 4, 5, 1)],
                         ids=["one_block", "three_blocks", "blocks_of_8_stride_2", "four_outputs"])
def test_fused_kernel_equals_the_two_kernels_bit_for_bit(c, oc, hw, stride, x86_target):
    """Scales with full mantissas (products and the difference round) and a batch norm whose
    multiply-add an FMA would round once: any contraction or misplaced channel shows."""
    rng = np.random.default_rng(oc + stride)
    a = ternary(rng, (1, c, hw, hw))
    weight = ttq(rng, (oc, c, 3, 3), rng.uniform(0.2, 2, oc), rng.uniform(0.2, 2, oc))
    halves = split_asymmetric(weight).halves()
    plus, minus = split_asymmetric(weight).plus, split_asymmetric(weight).minus
    scale, shift = rng.uniform(0.1, 3, oc).astype(np.float32), rng.standard_normal(oc).astype(np.float32)
    out_hw = (hw + 2 - 3) // stride + 1
    residual = rng.standard_normal((1, oc, out_hw, out_hw)).astype(np.float32)
    expected = two_kernel_reference(a, weight, stride, 1, scale, shift, residual)
    padding = (1, 1, 1, 1)
    attrs = {"bnn.taps": c * 9, "bnn.strides": [stride, stride], "bnn.padding": list(padding),
             "bnn.epilogue": ",".join(STEPS)}
    inputs = [words_of(a), weight_planes(halves.signs.astype(np.int64)), plus, minus, scale, shift, residual]

    def compute(d, w, b, m, s, t, res):
        dot = bitserial.ternary_conv2d_dot(d, w, (stride, stride), padding, (1, 1))
        return bitserial.ttq_conv2d_float(dot, b, m, s, t, res, steps=STEPS)

    scheduled, executable = build("ternary_conv2d_ttq", attrs, inputs, compute, x86_target)
    assert scheduled.plan.startswith("conv:") and "b*P - a*N" in scheduled.plan, scheduled.plan
    np.testing.assert_array_equal(run(scheduled, executable, inputs, expected.shape, expected.dtype), expected)


def test_halves_interleave_whole_blocks_of_output_channels():
    assert list(halves_order(4)) == [0, 1, 2, 3, 4, 5, 6, 7]  # one block: P then N
    order = halves_order(24)  # blocks of 8
    assert list(order[:16]) == list(range(8)) + list(range(24, 32)) and list(order[16:24]) == list(range(8, 16))
    for o in range(24):
        assert order[bitserial.positive_half(o, 24)] == o and order[bitserial.positive_half(o, 24) + 8] == o + 24


def kernel_calls(mod) -> list[str]:
    """The op of every kernel call in ``main``, in order (identical kernels share a PrimFunc)."""
    ops = {gvar.name_hint: str(f.attrs["bnn.op"]) for gvar, f in mod.functions_items()
           if f.attrs is not None and "bnn.op" in f.attrs}
    return [ops[name] for name in re.findall(r"R\.call_tir\((\w+),", str(mod["main"])) if name in ops]


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_ttq_resnet_runs_no_difference_kernel_and_matches_the_unfused_path(tmp_path, dynamo, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export(resnet("ttq", blocks=1), tmp_path / "ttq.onnx", dynamo, size=16)
    ops = kernel_calls(lower_onnx(path).mod)
    assert DIFFERENCE not in ops and ops.count("ternary_conv2d_ttq") == 6, ops
    x = np.random.default_rng(5).standard_normal((1, 3, 16, 16)).astype(np.float32)
    x[:, :, ::4] = 0.0
    fused = CompiledRunner(compile_onnx(path).executable).run(x)
    # the same model with the difference kernels left apart
    monkeypatch.setattr(pipeline, "fuse_ttq_difference", lambda logs=None: pipeline.relax.transform.DeadCodeElimination())
    assert kernel_calls(lower_onnx(path).mod).count(DIFFERENCE) == 6
    unfused = CompiledRunner(compile_onnx(path).executable).run(x)
    assert len(fused) == len(unfused) == 1
    np.testing.assert_array_equal(fused[0], unfused[0])


@pytest.mark.skipif(any(shutil.which(t) is None for t in ("qemu-aarch64", "aarch64-linux-gnu-gcc")),
                    reason="qemu-aarch64 or aarch64-linux-gnu-gcc missing: run tools/install_system_deps.sh")
def test_fused_ttq_kernels_on_aarch64_match_x86_under_qemu(tmp_path):
    from bnn_tvm.targets.kernel_check import check_kernels, record_kernel_calls, target_constants

    path = save(ttq_graph(b=0.61, a=1.37), tmp_path / "m.onnx")
    for target in ("x86", "rasp3b"):
        compile_onnx(path, target).export(str(tmp_path / f"{target}.so"))
    x = np.random.default_rng(2).standard_normal((1, 16, 8, 8)).astype(np.float32)
    x[:, :, ::3] = 0.0
    calls = record_kernel_calls(str(tmp_path / "x86.so"), x)
    assert sum("_conv2d_ttq" in c.symbol for c in calls) == 4, [c.symbol for c in calls]
    report = check_kernels(str(tmp_path / "x86.so"), str(tmp_path / "rasp3b.so"), "rasp3b", x, calls=calls,
                           constants=target_constants(path, "rasp3b"))
    assert report.ok, "\n".join(report.lines())
