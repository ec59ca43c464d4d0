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
import torch
from bibert import BiAttention, export
from conftest import random_arguments, run_on_cpu

from bnn_tvm import schedules
from bnn_tvm.compilation.compiler import lower_onnx
from bnn_tvm.compilation.inspection import inspect_onnx
from bnn_tvm.compilation.verify import verify
from bnn_tvm.schedules import bitserial, cuda

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
    context = "ternary_attention_context" if zero_bias else "binary_attention_context"
    assert context in kernels.values() and kind.replace("_scores", "_bits") in kernels.values(), kernels
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
        if "_attention_" not in op and op not in ("pack_heads", "pack_values"):
            continue
        arrays = random_arguments(func, rng)
        expected = run_on_cpu(func, arrays)
        assert np.array_equal(expected, run_on_cpu(cuda.emulate(func, op), arrays)), gvar.name_hint
        checked.append(op)
    assert any(op.endswith("attention_scores") for op in checked), checked
    assert {op.split("_", 1)[1] for op in checked} >= {"attention_bits", "attention_context", "values"}, checked


def test_attention_compiles_for_cuda(tmp_path):
    from bnn_tvm.compilation.compiler import compile_onnx

    source = cuda.cuda_source(compile_onnx(attention_model(tmp_path, True, True), "cuda").executable)
    names = re.findall(r"__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(", source)
    assert any("attention_scores" in name for name in names), names
    assert any("attention_context" in name for name in names), names
    assert "__popc" in source
    if cuda.cuda_root() is not None:  # valid CUDA: nvcc makes PTX of it
        assert ".entry" in cuda.compile_ptx(source)


# Issue 28, item 2: Bi-Attention's P = bool(S / sqrt(d) + mask) as bits, P @ Sign(V) as popcounts

KEYS_MASK = np.array([0.0, -1.0, -0.5, -10000.0, 0.25, -2.0, 0.0, -0.125] * 2, np.float32)  # BERT's 0 / -10000 and ties


def masked_model(tmp_path, form: str, dynamo: bool = False, heads: int = 1) -> str:
    """One head of d = 64 (``S / 8`` exact: ``S / 8 + m`` is exactly 0 at ``S = -8 m``, ties of
    every mask value here) with the mask per key, ternary Signs (zero biases: S takes every
    integer, 0 included)."""
    mask = torch.from_numpy(KEYS_MASK.reshape(1, 1, 1, TOKENS))
    model = BiAttention(HIDDEN, heads, outputs="all", mask=mask, form=form)
    name = f"masked_{form.replace('>=', 'ge').replace('>', 'gt')}_{'dynamo' if dynamo else 'legacy'}_{heads}.onnx"
    return export(tmp_path / name, model, TOKENS, HIDDEN, dynamo=dynamo, zero_bias=True)


def ties(path, x) -> int:
    """How many of ONNX Runtime's ``S / sqrt(d) + mask`` are exactly 0 (the comparison's tie)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    _, raw, _ = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    depth = HIDDEN // raw.shape[1]
    return int(np.sum(raw / np.float32(np.sqrt(depth)) + KEYS_MASK == 0))


def kernels_of(path) -> dict:
    return {node.op_type + ":" + node.name: node.kernel for node in inspect_onnx(path)}


@pytest.mark.parametrize("form,dynamo", [(">=", False), (">", False), ("where", False), (">", True)],
                         ids=["ge-legacy", "gt-legacy", "where-legacy", "gt-dynamo"])
def test_masked_attention_bits_and_context_are_exact(tmp_path, form, dynamo, monkeypatch):
    monkeypatch.setenv("BNN_STRICT_SCHEDULES", "1")  # the fast CPU schedules take 16 keys (not a whole word) too
    path = masked_model(tmp_path, form, dynamo)
    kernels = kernels_of(path)
    matmuls = [kernel for name, kernel in kernels.items() if name.startswith("MatMul:")]
    assert "ternary_attention_context" in matmuls and "ternary_attention_bits" in kernels.values(), kernels
    assert all(kernel is not None for kernel in matmuls), kernels  # every MatMul binary, P @ V included
    x = inputs()
    assert ties(path, x) > 0  # ties exactly on the comparison, so > and >= differ
    report = verify(path, "x86", x=x)
    assert report.ok and report.exact and report.max_abs_diff == 0, "\n".join(report.lines())


def test_score_intervals_match_the_float_chain():
    """The folded intervals against the float32 chain on every S, d = 32 (sqrt inexact)."""
    from bnn_tvm.relay_passes.analysis.attention import score_intervals

    scale = np.float32(np.sqrt(32))
    mask = np.array([0, -10000, -1e-7, 1e-7, -0.1767767, 0.5], np.float32).reshape(1, 1, 1, -1)
    for strict in (False, True):
        low, high = score_intervals([("divide", np.array(scale).reshape(1, 1, 1, 1)), ("add", mask)], 0.0, strict, 32, None)
        s = np.arange(-32, 33)
        value = (s[:, None].astype(np.float32) / scale + mask.reshape(-1)).astype(np.float32)
        expected = value > 0 if strict else value >= 0
        got = (s[:, None] >= low.reshape(-1)) & (s[:, None] <= high.reshape(-1))
        assert np.array_equal(got, expected)
        assert not got[:, 1].any()  # -10000: never


def test_attention_threshold_off_by_one_fails_verify(tmp_path, monkeypatch):
    from bnn_tvm.relay_passes import fuse_attention_context

    path = masked_model(tmp_path, ">=")
    original = fuse_attention_context.score_intervals

    def off_by_one(*args):  # S = low (the tie S / 8 + m = 0) no longer counts
        low, high = original(*args)
        return np.where(low > -(1 << 29), low + 1, low).astype(np.int32), high

    monkeypatch.setenv("BNN_TVM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fuse_attention_context, "score_intervals", off_by_one)
    report = verify(path, "x86", x=inputs())
    assert not report.exact and report.max_abs_diff > 0
    assert lower_onnx(path).kernel_calls().get("unpack_bits") == 1  # P, a model output, read from the bits


def test_verify_compares_the_attention_decisions(tmp_path):
    """``P`` is one of the binarized tensors ``verify`` compares, unpacked from the bits kernel
    (not computed again by the float ops on the scores): the verify build runs ``unpack_bits``,
    the deployed one (the context its only output) does not."""
    mask = torch.from_numpy(KEYS_MASK.reshape(1, 1, 1, TOKENS))
    path = export(tmp_path / "context_only.onnx", BiAttention(HIDDEN, 1, mask=mask, form=">="), TOKENS, HIDDEN,
                  zero_bias=True)
    decisions = [t for t, kind in lower_onnx(path).packed_kinds().items() if kind.endswith("_attention_bits")]
    assert len(decisions) == 1
    deployed = lower_onnx(path).kernel_calls()
    exposed = lower_onnx(path, extra_outputs=decisions).kernel_calls()
    assert "unpack_bits" not in deployed and exposed.get("unpack_bits") == 1, exposed
    assert {k: v for k, v in exposed.items() if k != "unpack_bits"} == deployed
    report = verify(path, "x86", x=inputs())
    assert report.ok and decisions[0] not in report.binary_mismatches and report.binary_checked >= 3


def test_verify_names_wrong_attention_decisions(tmp_path, monkeypatch):
    """An integer interval off by one at the tie: ``verify`` counts the decisions that differ."""
    from bnn_tvm.relay_passes import fuse_attention_context

    original = fuse_attention_context.score_intervals

    def off_by_one(*args):
        low, high = original(*args)
        return np.where(low > -(1 << 29), low + 1, low).astype(np.int32), high

    mask = torch.from_numpy(KEYS_MASK.reshape(1, 1, 1, TOKENS))
    path = export(tmp_path / "context_only.onnx", BiAttention(HIDDEN, 1, mask=mask, form=">="), TOKENS, HIDDEN,
                  zero_bias=True)
    decisions = [t for t, kind in lower_onnx(path).packed_kinds().items() if kind.endswith("_attention_bits")]
    monkeypatch.setenv("BNN_TVM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fuse_attention_context, "score_intervals", off_by_one)
    report = verify(path, "x86", x=inputs())
    assert report.binary_mismatches.get(decisions[0], 0) > 0 and not report.ok, report.binary_mismatches


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_bibert_layer_runs_every_matmul_binary_and_verifies(tmp_path, dynamo, monkeypatch):
    """A whole encoder layer (32 tokens: whole words of keys): every MatMul a binary kernel, the
    attention's two included, and ``verify`` exact."""
    from bibert import BiBertLayer

    monkeypatch.setenv("BNN_STRICT_SCHEDULES", "1")
    path = export(tmp_path / f"layer_{dynamo}.onnx", BiBertLayer(HIDDEN, HEADS, 128), 32, HIDDEN, dynamo=dynamo)
    kernels = kernels_of(path)
    matmuls = {name: kernel for name, kernel in kernels.items() if name.startswith("MatMul:")}
    assert len(matmuls) == 8 and all(matmuls.values()), matmuls  # q, k, v, scores, context, out, up, down
    assert any(k.endswith("_attention_context") for k in matmuls.values()), matmuls
    x = np.random.default_rng(1).standard_normal((1, 32, HIDDEN)).astype(np.float32)
    report = verify(path, "x86", x=x)
    assert report.ok and report.exact, "\n".join(report.lines())
