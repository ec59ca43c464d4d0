#!/usr/bin/env python3
"""Write a binary MLP-Mixer-style ONNX model (seeded random ±1 weights), for `bench`.

    python tools/mixer_onnx.py mixer.onnx
    python -m bnn_tvm bench mixer.onnx --target x86 --threads 1

Two blocks on ``[1, 196, 384]`` tokens (14x14 patches of 384 features), each
``t + (b(b(t) @ W1 * s1 + c1) @ W2) * s2`` with binary ``W1`` (384 -> 1536) and ``W2``
(1536 -> 384): the four matmuls of ``LiftTokenMatmul``'s README figure.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]


def mixer_model(tokens: int = 196, features: int = 384, hidden: int = 1536, blocks: int = 2, seed: int = 1):
    from onnx import TensorProto, helper
    from onnx_builders import GraphBuilder

    g = GraphBuilder([1, tokens, features], seed=seed)
    g.input = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, tokens, features])
    t = "x"
    for _ in range(blocks):
        h = g.node("MatMul", [g.binarize(t), g.const(g.binary_weight((features, hidden)), "w")])
        h = g.node("Add", [g.node("Mul", [h, g.const(np.float32(1 / 64))]),
                           g.const(g.rng.standard_normal(hidden).astype(np.float32))])
        out = g.node("MatMul", [g.binarize(h), g.const(g.binary_weight((hidden, features)), "w")])
        t = g.node("Add", [g.node("Mul", [out, g.const(np.float32(1 / 64))]), t])
    return g.model([t])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="the ONNX file to write")
    args = parser.parse_args()
    import onnx

    from bnn_tvm.errors import BnnError
    from bnn_tvm.io import atomic_write

    model = mixer_model()
    try:
        atomic_write(args.output, lambda tmp: onnx.save(model, tmp))
    except BnnError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
