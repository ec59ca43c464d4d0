"""Point MLPs (PointNet, BiPointNet): per-channel ops between ``transpose(1, 2)``s move onto the
``[B*N, C]`` rows of the binary denses (``LiftTokenMatmul``), and a max over the points
before a binarizer runs on thresholded bits (``analysis.pools``): no transpose kernel between
binary layers, every decision equal to ONNX Runtime's."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import check
from onnx_builders import GraphBuilder, save
from published_bnn import bipointnet, export_points

from bnn_tvm.compilation.compiler import lower_onnx
from bnn_tvm.compilation.inspection import inspect_onnx
from bnn_tvm.compilation.verify import verify
from bnn_tvm.relay_passes.analysis import pools
from bnn_tvm.relay_passes.lift_token_matmul import ROWS

SWAP = [0, 2, 1]


def point_inputs(points, channels, batch=3, seed=1):
    x = np.random.default_rng(seed).standard_normal((batch, points, channels)).astype(np.float32)
    x[:, ::5, ::3] = 0.0  # exactly on the binarizer's threshold
    return x


def float_ops(path) -> str:
    """The lowered main function's text: what stays on TVM's float path."""
    return lower_onnx(path).mod["main"].script(show_meta=False)


def channel_ops_graph(seed=3, points=24, cin=40, hidden=48, cout=20):
    """binarize -> MatMul -> Transpose -> BN -> Mul [C, 1] -> PRelu [C, 1] -> Transpose -> binarize -> MatMul."""
    g = GraphBuilder([1, points, cin], seed=seed)
    h = g.node("MatMul", [g.binarize("x"), g.const(g.binary_weight((cin, hidden)), "w")])
    t = g.node("Transpose", [h], perm=SWAP)
    t = g.batch_norm(t, *g.random_bn(hidden, negative_fraction=0.3))
    t = g.node("Mul", [t, g.const(g.rng.uniform(0.5, 2, (hidden, 1)).astype(np.float32))])
    t = g.node("PRelu", [t, g.const(g.rng.uniform(0.1, 0.5, (hidden, 1)).astype(np.float32))])
    h = g.node("Transpose", [t], perm=SWAP)
    out = g.node("MatMul", [g.binarize(h), g.const(g.binary_weight((hidden, cout)), "w")])
    return g.model([out])


def points_max_graph(seed=4, points=32, cin=40, hidden=70, negative_fraction=0.4):
    """binarize -> MatMul -> Transpose -> BN (some negative gammas) -> Transpose -> ReduceMax over
    the points -> binarize -> MatMul."""
    g = GraphBuilder([1, points, cin], seed=seed)
    h = g.node("MatMul", [g.binarize("x"), g.const(g.binary_weight((cin, hidden)), "w")])
    t = g.batch_norm(g.node("Transpose", [h], perm=SWAP), *g.random_bn(hidden, negative_fraction))
    pooled = g.node("ReduceMax", [g.node("Transpose", [t], perm=SWAP), g.const(np.array([1], np.int64))], keepdims=0)
    out = g.node("MatMul", [g.binarize(pooled), g.const(g.binary_weight((hidden, 10)), "w")])
    return g.model([out])


def test_per_channel_ops_between_transposes_fold_into_thresholds(tmp_path):
    """The batch norm, a per-channel scale and a PReLU on the ``[B, C, N]`` view fold into the
    first dense's thresholds; both transposes are gone."""
    path = save(channel_ops_graph(), tmp_path / "m.onnx")
    report = check(path, point_inputs(24, 40), ["binary_dense + 4 float op(s) + binarizer -> binary_dense_threshold"])
    assert report.max_abs_diff == 0.0
    assert "permute_dims" not in float_ops(path)
    reports = {r.op_type: r for r in inspect_onnx(path)}
    assert all(reports[op].binary for op in ("BatchNormalization", "Mul", "PRelu", "MatMul")), reports
    assert "removed" in reports["Transpose"].note


def test_transposes_around_a_float_tensor_cancel(tmp_path):
    """A float stem (no binarized operand) before the batch norm: it moves onto a reshape of the
    stem's output all the same, and the binarizer after it reads rows."""
    g = GraphBuilder([1, 16, 3], seed=5)
    h = g.node("MatMul", ["x", g.const(g.rng.standard_normal((3, 40)).astype(np.float32))])
    t = g.batch_norm(g.node("Transpose", [h], perm=SWAP), *g.random_bn(40))
    h = g.node("Transpose", [g.node("Clip", [t, g.const(np.float32(-1)), g.const(np.float32(1))])], perm=SWAP)
    out = g.node("MatMul", [g.binarize(h), g.const(g.binary_weight((40, 8)), "w")])
    path = save(g.model([out]), tmp_path / "m.onnx")
    check(path, point_inputs(16, 3), ["-> binary_dense"])
    assert "permute_dims" not in float_ops(path)


def test_max_over_points_runs_on_thresholded_bits(tmp_path):
    """Channels with a negative gamma take the min of the integers (an AND of the bits), the
    others the max (an OR)."""
    path = save(points_max_graph(), tmp_path / "m.onnx")
    report = check(path, point_inputs(32, 40), ["-> points_max_or", "binary_dense_threshold"])
    assert report.max_abs_diff == 0.0
    lowered = float_ops(path)
    assert "R.max(" not in lowered and "permute_dims" not in lowered


def test_max_over_points_with_the_wrong_direction_fails(tmp_path, monkeypatch):
    """Mutation: the max taken on every channel (no min for negative gammas) is caught."""
    monkeypatch.setattr(pools, "chain_direction", lambda scale, steps, channels: np.ones(channels, np.int8))
    path = save(points_max_graph(), tmp_path / "m.onnx")
    report = verify(path, "x86", x=point_inputs(32, 40))
    assert not report.ok


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_bipointnet_runs_binary_without_transposes(tmp_path, dynamo):
    """BiPointNet as its public code writes it, 1024 points: every binary linear layer in a
    binary kernel, no transpose left, the max over points on bits, verified exactly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_points(bipointnet(), tmp_path / "bipointnet.onnx", dynamo)
    reports = inspect_onnx(path)
    matmuls = [r for r in reports if r.op_type in ("MatMul", "Gemm")]
    assert [r.name for r in matmuls if not r.binary] == [matmuls[0].name, matmuls[-1].name]  # float stem, float fc
    transposes = [r for r in reports if r.op_type == "Transpose"]
    assert all(r.kernel == ROWS or "constant-folded" in r.note for r in transposes), transposes
    lowered = float_ops(path)
    assert "permute_dims" not in lowered and "R.max(" not in lowered
    report = verify(path, "x86", x=point_inputs(1024, 3, batch=2))
    assert report.ok, "\n".join(report.lines())
    assert report.max_abs_diff == 0.0 and report.binary_checked == 6
    assert any("points_max_or" in line for line in report.fused)


class PointConv1d(torch.nn.Module):
    """``Conv1d`` of htqin/BiPointNet's ``models/pointnet.py``: a shared MLP layer on ``[B, C, N]``
    points as ``permute -> view(-1, C) -> linear -> view(B, N, -1) -> permute``, here with
    ``torch.sign`` on the input and the weights (``BiLinear``'s forward)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.lin = torch.nn.Linear(cin, cout, bias=False)

    def forward(self, x):
        batch, channels, points = x.shape
        x = x.permute(0, 2, 1).contiguous().view(-1, channels)
        x = torch.nn.functional.linear(torch.sign(x), torch.sign(self.lin.weight))
        return x.view(batch, points, -1).permute(0, 2, 1).contiguous()


def test_verify_compares_sign_on_rows_of_a_fixed_batch_model(tmp_path):
    """The public code's layers binarize ``[B*N, C]`` rows: those ``Sign``s, compared by ``verify``
    as extra outputs, do not have the batch as first axis. A fixed-batch model (batch 1, as
    ``torch.onnx.export`` writes it) runs ``verify``'s 16 inputs one batch at a time, each output
    joined as ONNX Runtime's are."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(PointConv1d(8, 48), torch.nn.BatchNorm1d(48), torch.nn.Hardtanh(),
                                PointConv1d(48, 16)).eval()
    path = str(tmp_path / "rows.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 8, 64),), path, dynamo=False, input_names=["x"])
    report = verify(path, "x86")
    assert report.ok and report.exact, "\n".join(report.lines())
    assert report.binary_checked == 2  # both layers' Sign on [64, C] rows


class EmaMaxPool(torch.nn.Module):
    """``BiPointNetEncoder.forward``'s end with ``pool='ema-max'`` (models/pointnet.py of
    htqin/BiPointNet): ``bn3(conv3(x))``, ``torch.max(x, 2, keepdim=True)[0] + offset``, a view,
    then a binary linear on the pooled features."""

    def __init__(self, cin=16, cout=64):
        super().__init__()
        self.conv, self.bn = PointConv1d(cin, cout), torch.nn.BatchNorm1d(cout)
        self.fc = torch.nn.Linear(cout, 10, bias=False)
        with torch.no_grad():
            self.bn.running_mean.normal_(0, 2)
            self.bn.weight.normal_(1, 0.5)

    def forward(self, x):
        x = torch.max(self.bn(self.conv(x)), 2, keepdim=True)[0] + -3.2041
        x = x.view(-1, self.bn.num_features)
        return torch.nn.functional.linear(torch.sign(x), torch.sign(self.fc.weight))


def test_max_over_points_of_the_channel_first_layout_needs_no_transpose(tmp_path):
    """The max over points of the ``[B, C, N]`` view reduces the ``[B, N, C]`` rows' axis 1: no
    transpose of the ``N x C`` features left (it took 79 % of the public BiPointNet's time)."""
    torch.manual_seed(0)
    path = str(tmp_path / "ema_max.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(EmaMaxPool().eval(), (torch.randn(1, 16, 128),), path, dynamo=False, input_names=["x"])
    lowered = float_ops(path)
    assert lowered.count("permute_dims") == 1 and "R.permute_dims(x," in lowered, lowered  # the input's only
    assert "R.max(" in lowered and "axis=[1]" in lowered, lowered
    x = np.random.default_rng(2).standard_normal((8, 16, 128)).astype(np.float32)
    report = verify(path, "x86", x=x)
    assert report.ok and report.exact and report.max_abs_diff == 0, "\n".join(report.lines())
