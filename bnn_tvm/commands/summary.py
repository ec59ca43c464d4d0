"""``python -m bnn_tvm summary``: per-layer precision, memory and MACs, and the compression ratio."""

from __future__ import annotations


def add_parser(sub) -> None:
    s = sub.add_parser(
        "summary",
        help="per-layer precision, parameter memory and MACs of a model; compression ratio vs fp32",
        description="Per layer: input and weight precision, parameters by bit width, memory, MACs by "
        "precision; totals with the compression ratio against float32 (as Larq's models.summary).",
    )
    s.add_argument("model", help="a checkpoint (.pt), an ONNX file or a zoo model name")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(func=run)


def run(args) -> int:
    from ..measure.summary import summarize

    summary = summarize(args.model)
    print(summary.to_json() if args.json else summary.table())
    return 0
