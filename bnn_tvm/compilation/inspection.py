"""Per ONNX node: which binary kernel it became, or why it stayed on TVM's float path."""

from __future__ import annotations

from dataclasses import dataclass

from bnn_tvm.relay_passes.cancel_layout_transposes import LAYOUT
from bnn_tvm.relay_passes.fold_zero_pad_into_conv import ZERO_PAD
from bnn_tvm.relay_passes.fold_zero_scaled_term import ZERO_TERM
from bnn_tvm.relay_passes.lift_activation_scale import SCALE_AFTER
from bnn_tvm.relay_passes.lift_conv1d import LIFTED
from bnn_tvm.relay_passes.lift_token_matmul import LIFTED as TOKENS_AS_ROWS
from bnn_tvm.relay_passes.lift_token_matmul import POINTS_MAX
from bnn_tvm.relay_passes.lower_scaled_straight_through import SCALED_STRAIGHT_THROUGH
from bnn_tvm.relay_passes.lower_straight_through import STRAIGHT_THROUGH
from bnn_tvm.relay_passes.lower_zero_mean_sign import ZERO_MEAN_SIGN
from bnn_tvm.relay_passes.split_channel_ops_over_concat import SPLIT
from bnn_tvm.schedules.float_conv import FLOAT_KERNELS

from .compiler import lower_onnx
from ..frontend.onnx_import import load_onnx


MATRIX_OPS = ("Conv", "Gemm", "MatMul")
FLOAT_REWRITES = (*FLOAT_KERNELS, LIFTED, TOKENS_AS_ROWS, SPLIT, STRAIGHT_THROUGH, SCALED_STRAIGHT_THROUGH, ZERO_PAD,
                  SCALE_AFTER, LAYOUT, ZERO_MEAN_SIGN, POINTS_MAX, ZERO_TERM)  # rewrites that leave a node computing in float


@dataclass
class NodeReport:
    name: str
    op_type: str
    kernel: str | None  # the fused binary kernel, None when float
    note: str

    @property
    def binary(self) -> bool:
        return self.kernel is not None and self.kernel not in FLOAT_REWRITES


def constant_nodes(graph) -> set[str]:
    """Nodes whose inputs are all constants (TVM folds them when it compiles), in graph order."""
    known = {init.name for init in graph.initializer} | {""}
    found = set()
    for node in graph.node:
        if all(name in known for name in node.input):
            found.add(node.name)
            known.update(node.output)
    return found


def inspect_onnx(path: str, batch: int | None = None, sign_zero: str = "exact") -> list[NodeReport]:
    original = load_onnx(path)
    lowered = lower_onnx(path, batch, sign_zero=sign_zero)
    pinned = lowered.onnx_model.graph
    remaining = {node.name for node in pinned.node} - constant_nodes(pinned)
    kernel_of: dict[str, str] = {}
    detail_of: dict[str, str] = {}
    reasons: dict[str, str] = {}
    for log in lowered.logs:
        for rewrite in log.rewrites:
            for node in lowered.onnx_nodes(rewrite.nodes):
                kernel_of[node], detail_of[node] = rewrite.kernel, rewrite.detail
        for var, reason in log.kept_float.items():
            for node in lowered.onnx_nodes([var]):
                reasons.setdefault(node, reason)
    credit_straight_through(lowered, kernel_of, detail_of)
    reports = []
    for node in original.graph.node:
        if kernel_of.get(node.name) in FLOAT_REWRITES:
            note = f"float path: {reasons.get(node.name, 'no binarized operand')}; {detail_of[node.name]}"
            reports.append(NodeReport(node.name, node.op_type, kernel_of[node.name], note))
        elif node.name in kernel_of:
            reports.append(NodeReport(node.name, node.op_type, kernel_of[node.name], detail_of[node.name]))
        elif node.name not in remaining:
            reports.append(NodeReport(node.name, node.op_type, None, "constant-folded at compile time"))
        else:
            default = "float path: no binarized operand" if node.op_type in MATRIX_OPS else "float path"
            reports.append(NodeReport(node.name, node.op_type, None, reasons.get(node.name, default)))
    return reports


def credit_straight_through(lowered, kernel_of: dict, detail_of: dict) -> None:
    """A straight-through estimator became the ``Sign`` of its last ``Add``; its other nodes
    (``p``, the subtraction, the original ``Sign``) go where that ``Add`` went: into the pack of
    the binary layer reading it, or the float path."""
    for rewrite in (r for log in lowered.logs for r in log.rewrites if r.kernel == STRAIGHT_THROUGH):
        result, *parts = lowered.onnx_nodes(rewrite.nodes)
        if kernel_of.get(result) not in FLOAT_REWRITES:
            for node in parts:
                kernel_of[node], detail_of[node] = kernel_of[result], f"{detail_of[result]} ({rewrite.detail})"
