#!/usr/bin/env python3
"""ONNX Runtime's executed instructions per float part of Bi-Real ResNet-18's float twin on the
emulated ARM board, to set beside ``tools/arm_kernel_counts.py``'s per-kernel counts of bnn-tvm.

    python -m bnn_tvm board start --target rasp3b --port 9090
    python tools/arm_ort_parts.py --rpc 127.0.0.1:9090 --json parts.json

Each part (the stem conv + batch norm, the max pool, each downsampling shortcut's average pool +
1x1 conv + batch norm) is cut out of the ONNX graph (``onnx.utils.extract_model``) and run alone
in the board's ONNX Runtime (all graph optimisations, 1 thread), counted like ``bench`` counts
it (median of 3 counted ``session.run``); an Identity of one float gives the per-run overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def parts(model) -> dict[str, tuple[list[str], list[str]]]:
    """``{part: (input names, output names)}`` of Bi-Real's float parts."""
    nodes = list(model.graph.node)

    def consumer(output: str, op: str) -> str:
        return next(n.output[0] for n in nodes if output in n.input and n.op_type == op)

    stem = next(n for n in nodes if n.op_type == "Conv")
    stem_bn = consumer(stem.output[0], "BatchNormalization")
    found = {"stem conv 7x7 + BN": ([stem.input[0]], [stem_bn]),
             "max pool 3x3 s2": ([stem_bn], [consumer(stem_bn, "MaxPool")])}
    for pool in (n for n in nodes if n.op_type == "AveragePool"):
        bn = consumer(consumer(pool.output[0], "Conv"), "BatchNormalization")
        found[f"shortcut {pool.output[0]}: avg pool + 1x1 conv + BN"] = ([pool.input[0]], [bn])
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="birealnet18")
    parser.add_argument("--rpc", required=True, help="HOST:PORT of the emulated board (board start)")
    parser.add_argument("--json", help="write {part: instructions} here")
    args = parser.parse_args()

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, utils

    from bnn_tvm.devices.endpoint import Endpoint
    from bnn_tvm.devices.remote import remote_ort_bench
    from bnn_tvm.frontend.export import resolve_model

    path = resolve_model(args.model)
    model = onnx.load(path)
    shapes = {vi.name: [d.dim_value or 1 for d in vi.type.tensor_type.shape.dim]
              for vi in list(onnx.shape_inference.infer_shapes(model).graph.value_info) + list(model.graph.input)}
    results = {}
    with tempfile.TemporaryDirectory(prefix="bnn-ort-parts-") as folder:
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "noop",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        noop = os.path.join(folder, "noop.onnx")
        onnx.save(helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version), noop)
        cases = {"session.run overhead (Identity of 1 float)": (noop, np.zeros(1, np.float32))}
        for name, (inputs, outputs) in parts(model).items():
            part = os.path.join(folder, f"part{len(cases)}.onnx")
            utils.extract_model(path, part, inputs, outputs)
            cases[name] = (part, np.random.default_rng(0).standard_normal(shapes[inputs[0]]).astype(np.float32))
        for name, (part, x) in cases.items():
            results[name] = remote_ort_bench(part, "rasp3b", x, Endpoint(rpc=args.rpc), repeat=1, count_instructions=True)["instructions"]
            print(f"{results[name]:14,}  {name}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
