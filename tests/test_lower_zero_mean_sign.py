"""``LowerZeroMeanSign``: BiBERT's public Bi-Attention, whose decisions are
``ZMeanBinaryQuantizer`` (``sign``, then ``out[out == -1] = 0``), exported as
``Where(Equal(Sign(x), -1), 0, Sign(x))``, becomes ``x > 0`` on the scores kernel, so the
attention bits and ``P @ Sign(V)`` run as popcount kernels, exactly.

The attention is written as ``transformer/modeling_quant.py`` (``BertSelfAttention.forward``) and
``transformer/utils_quant.py`` (``BinaryQuantizer``, ``ZMeanBinaryQuantizer``) of htqin/BiBERT
write it with 1-bit activations; the linears are the zoo's ``BinaryLinear``. Zero biases make the
``Sign``s ternary and let ``S / 8 + mask`` hit 0 exactly: there ``sign`` is 0, kept by the
quantizer, so reading the form as ``>=`` (not ``>``) would fail ``verify``.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from bibert_public import BinaryQuantizer, ZMeanBinaryQuantizer  # utils_quant.py's, as BiBERT writes them
from torch import nn

from bnn_tvm.compilation.compiler import lower_onnx
from bnn_tvm.compilation.inspection import inspect_onnx
from bnn_tvm.compilation.verify import verify
from bnn_tvm.relay_passes.lower_zero_mean_sign import ZERO_MEAN_SIGN
from bnn_tvm.training.published_models import BinaryLinear

HIDDEN, HEADS, TOKENS = 64, 1, 16
KEYS_MASK = np.array([0.0, -1.0, -0.5, -10000.0, 0.25, -2.0, 0.0, -0.125] * 2, np.float32)  # BERT's 0 / -10000 and ties


class ZeroMeanAttention(nn.Module):
    """``BertSelfAttention.forward`` at 1-bit activations: ``Sign(Q) Sign(K)^T / sqrt(d) + mask``,
    ``ZMeanBinaryQuantizer`` as the decisions, ``P @ Sign(V)``; returns the context and ``P``.
    ``scale_mask``: the scores times the mask instead of plus it (a NaN where ``0 * inf``)."""

    def __init__(self, mask: torch.Tensor, scale_mask: bool = False):
        super().__init__()
        self.query, self.key, self.value = (BinaryLinear(HIDDEN, HIDDEN) for _ in range(3))
        self.register_buffer("mask", mask)
        self.scale_mask = scale_mask

    def heads(self, x):
        return x.view(x.shape[0], x.shape[1], HEADS, HIDDEN // HEADS).permute(0, 2, 1, 3)

    def forward(self, x):
        q, k, v = self.heads(self.query(x)), self.heads(self.key(x)), self.heads(self.value(x))
        q, k = BinaryQuantizer.apply(q), BinaryQuantizer.apply(k)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(HIDDEN // HEADS)
        scores = scores * self.mask if self.scale_mask else scores + self.mask
        probs = ZMeanBinaryQuantizer.apply(scores)
        context = torch.matmul(probs, BinaryQuantizer.apply(v)).permute(0, 2, 1, 3).contiguous()
        return context.view(context.shape[0], context.shape[1], -1), probs


def exported(tmp_path, dynamo: bool = False, mask=KEYS_MASK, scale_mask: bool = False) -> str:
    torch.manual_seed(0)
    model = ZeroMeanAttention(torch.from_numpy(mask.reshape(1, 1, 1, TOKENS)), scale_mask)
    for module in model.modules():
        if isinstance(module, BinaryLinear):  # integer linears: Sign(Q), Sign(K), Sign(V) see 0
            nn.init.zeros_(module.bias)
            module.scaled = False
    path = str(tmp_path / f"zero_mean_{'dynamo' if dynamo else 'legacy'}_{'mul' if scale_mask else 'add'}.onnx")
    torch.onnx.export(model.eval(), (torch.randn(1, TOKENS, HIDDEN),), path, dynamo=dynamo, input_names=["x"],
                      output_names=["context", "probs"])
    return path


def inputs() -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((1, TOKENS, HIDDEN)).astype(np.float32)
    x[0, :, ::7] = 0.0
    return x


def test_the_form_is_the_strict_comparison():
    """The claim, on ONNX Runtime: ``Where(Equal(Sign(x), -1), 0, Sign(x)) == Cast(x > 0)`` on
    negatives, both zeros, subnormals, huge values and infinities."""
    import onnxruntime as ort
    from onnx import helper

    nodes = [helper.make_node("Sign", ["x"], ["s"]), helper.make_node("Equal", ["s", "m"], ["e"]),
             helper.make_node("Where", ["e", "z", "s"], ["y"])]
    graph = helper.make_graph(nodes, "zmean", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None])],
                              [onnx.numpy_helper.from_array(np.array(-1, np.float32), "m"),
                               onnx.numpy_helper.from_array(np.array(0, np.float32), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = np.array([-np.inf, -3e38, -1, -1e-45, -0.0, 0.0, 1e-45, 1e-38, 1, 3e38, np.inf], np.float32)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.array_equal(y, (x > 0).astype(np.float32)) and not np.signbit(y).any()


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_public_bi_attention_runs_binary_and_exact(tmp_path, dynamo, monkeypatch):
    monkeypatch.setenv("BNN_STRICT_SCHEDULES", "1")  # 16 keys: not a whole word
    path = exported(tmp_path, dynamo)
    reports = inspect_onnx(path)
    matmuls = {r.name: r.kernel for r in reports if r.op_type == "MatMul"}
    assert len(matmuls) == 5 and all(r.binary for r in reports if r.op_type == "MatMul"), matmuls
    assert "ternary_attention_context" in matmuls.values(), matmuls
    decisions = [r for r in reports if r.op_type in ("Where", "Equal")]
    assert decisions and all(r.kernel == "ternary_attention_bits" for r in decisions), decisions
    x = inputs()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    probs = session.run(["probs"], {"x": x})[0]
    assert 0 < probs.sum() < probs.size
    report = verify(path, "x86", x=x)
    assert report.ok and report.exact and report.max_abs_diff == 0, "\n".join(report.lines())  # context and P


def test_ties_on_the_threshold_make_the_strict_form_matter(tmp_path):
    """Some ``S / 8 + mask`` are exactly 0 here, where ``>=`` and ``>`` differ: the verify above
    would fail for a rewrite to ``>=``."""
    import onnxruntime as ort

    path = exported(tmp_path)
    model = onnx.load(path)
    scores = next(n.output[0] for n in model.graph.node if n.op_type == "Add" and "mask" in n.input)
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(scores))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    assert np.sum(session.run([scores], {"x": inputs()})[0] == 0) > 0


def test_a_chain_that_can_give_nan_stays_float(tmp_path):
    """``S / 8 * mask`` with an infinite mask value is NaN at ``S = 0`` (``0 * inf``): the graph
    gives NaN there, ``x > 0`` would give 0, so the form stays float, saying why."""
    mask = np.ones(TOKENS, np.float32)
    mask[3] = np.inf
    path = exported(tmp_path, mask=mask, scale_mask=True)
    lowered = lower_onnx(path)
    reasons = [reason for log in lowered.logs for reason in log.kept_float.values()]
    assert any("NaN for some reachable score" in reason for reason in reasons), reasons
    assert not any(r.kernel == ZERO_MEAN_SIGN for log in lowered.logs for r in log.rewrites)
    assert not any(r.kernel.endswith("_attention_context") for log in lowered.logs for r in log.rewrites)


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_public_bibert_layer_binary_and_exact(tmp_path, dynamo, monkeypatch):
    """The whole layer as the public code writes it (``tests/bibert_public.py``): every MatMul a
    binary kernel, the biases and residual adds in the dense epilogues (the dynamo exporter's
    ``node_add_13``, a residual add, was once credited as a pack with a pass's binding named after
    ``node_add_1``, and verify compared it as a binarized tensor), ``summary`` all 1-bit, ``verify``
    exact."""
    from bibert_public import export

    from bnn_tvm.measure.summary import summarize_onnx

    monkeypatch.setenv("BNN_STRICT_SCHEDULES", "1")
    path = export(tmp_path / f"public_{dynamo}.onnx", dynamo=dynamo)
    reports = inspect_onnx(path)
    assert all(r.binary for r in reports if r.op_type == "MatMul"), [r for r in reports if r.op_type == "MatMul"]
    model = onnx.load(path)
    norm_inputs = {i for n in model.graph.node if n.op_type == "LayerNormalization" for i in n.input}
    residuals = [r for r in reports if r.op_type == "Add" and any(o in norm_inputs for o in next(
        n.output for n in model.graph.node if n.name == r.name))]
    assert len(residuals) == 2 and all(r.kernel == "ternary_dense_epilogue" for r in residuals), residuals
    adds = {r.name: r.kernel for r in reports if r.op_type == "Add" and r.kernel and r.kernel.endswith("_epilogue")}
    assert len(adds) >= 6, adds  # QuantizeLinear's expanded bias, one per linear, in its dense's epilogue
    summary = summarize_onnx(path)
    assert summary.binary_mac_fraction == 1.0
    report = verify(path, "x86", x=np.random.default_rng(1).standard_normal((4, 32, 64)).astype(np.float32))
    assert report.ok and report.exact, "\n".join(report.lines())
    assert report.binary_checked == 8  # 4 dense inputs, Sign(Q), Sign(K), Sign(V), the decisions P
