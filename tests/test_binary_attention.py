"""Issue 28, item 1: BiBERT's ``Sign(Q) @ Sign(K)^T`` as one popcount kernel, exact.

A small Bi-Attention block (hidden 64, 2 heads, 16 tokens) as ``tests/bibert.py`` writes it,
exported with both of PyTorch's exporters, returning the context, the raw scores and the
attention bits, so that ``verify`` compares all three with ONNX Runtime (max abs diff 0). With
zero biases the linears' outputs hit 0 and the ``Sign``s are ternary (sign and nonzero words);
with random biases they are proven never 0 (bipolar words). A kernel that drops a tap fails
``verify``; the CUDA schedule, replayed on the CPU, computes what the compute does.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from bibert import BiAttention, export
from conftest import random_arguments, run_on_cpu

import schedules
from bnn_tvm.compiler import lower_onnx
from bnn_tvm.inspection import inspect_onnx
from bnn_tvm.verify import verify
from schedules import bitserial, cuda

HIDDEN, HEADS, TOKENS = 64, 2, 16


def attention_model(tmp_path, dynamo: bool, zero_bias: bool) -> str:
    name = f"attention_{'dynamo' if dynamo else 'legacy'}_{'zero' if zero_bias else 'bias'}.onnx"
    return export(tmp_path / name, BiAttention(HIDDEN, HEADS, outputs="all"), TOKENS, HIDDEN, dynamo=dynamo,
                  zero_bias=zero_bias)


def inputs(seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((1, TOKENS, HIDDEN)).astype(np.float32)
    x[0, :, ::7] = 0.0  # Sign(x) = 0 on the linears' inputs too
    return x


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("zero_bias", [True, False], ids=["ternary", "bipolar"])
def test_attention_scores_are_exact(tmp_path, dynamo, zero_bias):
    path = attention_model(tmp_path, dynamo, zero_bias)
    kind = "ternary_attention_scores" if zero_bias else "binary_attention_scores"
    kernels = {node.name: node.kernel for node in inspect_onnx(path)}
    assert kind in kernels.values(), kernels
    report = verify(path, "x86", x=inputs())
    assert report.ok and report.exact, "\n".join(report.lines())
    assert report.max_abs_diff == 0, "\n".join(report.lines())  # context, scores and attention bits
    assert not report.binary_mismatches


def test_attention_kernel_missing_a_tap_fails_verify(tmp_path, monkeypatch):
    path = attention_model(tmp_path, False, False)
    original = bitserial.attention_scores_dot

    def drop_a_tap(q, k, taps, ternary=False):  # counts d - 1 taps: every score one off
        return original(q, k, taps - 1, ternary)

    monkeypatch.setenv("BNN_TVM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(bitserial, "attention_scores_dot", drop_a_tap)
    report = verify(path, "x86", x=inputs())
    assert not report.exact and report.max_abs_diff > 0


@pytest.mark.parametrize("zero_bias", [True, False], ids=["ternary", "bipolar"])
def test_cuda_attention_schedule_replays_exactly(tmp_path, zero_bias):
    path = attention_model(tmp_path, False, zero_bias)
    rng = np.random.default_rng(3)
    checked = []
    for gvar, func, op in schedules.bnn_kernels(lower_onnx(path, target="cuda").mod):
        if not op.endswith("attention_scores") and op != "pack_heads":
            continue
        arrays = random_arguments(func, rng)
        expected = run_on_cpu(func, arrays)
        assert np.array_equal(expected, run_on_cpu(cuda.emulate(func, op), arrays)), gvar.name_hint
        checked.append(op)
    assert any(op.endswith("attention_scores") for op in checked), checked


def test_attention_compiles_for_cuda(tmp_path):
    from bnn_tvm.compiler import compile_onnx

    source = cuda.cuda_source(compile_onnx(attention_model(tmp_path, True, True), "cuda").executable)
    names = re.findall(r"__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(", source)
    assert any("attention_scores" in name for name in names), names
    assert "__popc" in source
    if cuda.cuda_root() is not None:  # valid CUDA: nvcc makes PTX of it
        assert ".entry" in cuda.compile_ptx(source)
