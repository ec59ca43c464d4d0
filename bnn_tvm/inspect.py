"""Per ONNX node: which binary kernel it became, or why it stayed on TVM's float path."""

from __future__ import annotations

from dataclasses import dataclass

from .compiler import lower_onnx
from .onnx_import import load_onnx


MATRIX_OPS = ("Conv", "Gemm", "MatMul")


@dataclass
class NodeReport:
    name: str
    op_type: str
    kernel: str | None  # the fused binary kernel, None when float
    note: str

    @property
    def binary(self) -> bool:
        return self.kernel is not None


def onnx_nodes_of(names, provenance: dict, aliases: dict) -> list[str]:
    variables = [v for name in names for v in aliases.get(name, [name])]
    return [provenance[v] for v in variables if v in provenance]


def inspect_onnx(path: str, batch: int | None = None) -> list[NodeReport]:
    original = load_onnx(path)
    lowered = lower_onnx(path, batch)
    remaining = {node.name for node in lowered.onnx_model.graph.node}
    kernel_of: dict[str, str] = {}
    detail_of: dict[str, str] = {}
    aliases: dict[str, list[str]] = {}  # bit tensors the passes created -> the binarizer's variables
    for log in lowered.logs:
        for rewrite in log.rewrites:
            if rewrite.kernel == "pack_sign":
                aliases[rewrite.nodes[-1]] = list(rewrite.nodes[:-1])
            for node in onnx_nodes_of(rewrite.nodes, lowered.provenance, aliases):
                kernel_of[node], detail_of[node] = rewrite.kernel, rewrite.detail
    reasons = {}
    for log in lowered.logs:
        for var, reason in log.kept_float.items():
            for node in onnx_nodes_of([var], lowered.provenance, aliases):
                reasons.setdefault(node, reason)
    reports = []
    for node in original.graph.node:
        if node.name in kernel_of:
            reports.append(NodeReport(node.name, node.op_type, kernel_of[node.name], detail_of[node.name]))
        elif node.name not in remaining:
            reports.append(NodeReport(node.name, node.op_type, None, "constant-folded at compile time"))
        else:
            default = "float path: no binarized operand" if node.op_type in MATRIX_OPS else "float path"
            reports.append(NodeReport(node.name, node.op_type, None, reasons.get(node.name, default)))
    return reports
