#!/usr/bin/env python3
"""Write an example binarized ONNX model (seeded random weights) behind a README figure, for `bench`.

    python tools/example_onnx.py mixer mixer.onnx
    python tools/example_onnx.py binarynet binarynet.onnx
    python tools/example_onnx.py bibert bibert.onnx
    python -m bnn_tvm bench mixer.onnx --target x86 --threads 1

``mixer``: a binary MLP-Mixer-style net. Two blocks on ``[1, 196, 384]`` tokens (14x14 patches
of 384 features), each ``t + (b(b(t) @ W1 * s1 + c1) @ W2) * s2`` with binary ``W1``
(384 -> 1536) and ``W2`` (1536 -> 384): the four matmuls of ``LiftTokenMatmul``'s figure.

``binarynet``: BinaryNet's CIFAR-10 network as its PyTorch code exports it (Courbariaux et al.
2016, arXiv:1602.02830, the layers of the widely used PyTorch port). Each binary layer applies
``torch.sign`` to its input and weights in ``forward`` (so the ONNX graph holds ``Sign`` nodes,
which output 0 at 0), then BatchNorm and Hardtanh; the first conv reads the float image.
128-128-M-256-256-M-512-512-M, then dense 1024-1024-10, on 32x32 RGB. BatchNorm statistics are
random too, so the thresholds are not trivial. The figure of the ``Sign`` rounds.

``bibert``: one BiBERT encoder layer (hidden 256, 4 heads, 64 tokens, FFN 1024; ``tests/bibert.py``):
binary Q/K/V/output/FFN linears with ``torch.sign`` and mean-|W| weight scales, ``Sign`` on the
heads, Bi-Attention (``scores / sqrt(d) >= 0`` as 0/1, no softmax), GELU and LayerNorm; exported
with ``torch.onnx.export(dynamo=False)``, for ``[1, 64, 256]`` inputs.

Each writes the same bytes every time.
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


def binarynet(seed: int = 0):
    import torch
    from torch import nn

    class SignConv2d(nn.Conv2d):
        def __init__(self, *args, binary_input: bool = True, **kwargs):
            super().__init__(*args, **kwargs)
            self.binary_input = binary_input

        def forward(self, x):
            x = torch.sign(x) if self.binary_input else x
            return nn.functional.conv2d(x, torch.sign(self.weight), None, self.stride, self.padding)

    class SignLinear(nn.Linear):
        def forward(self, x):
            return nn.functional.linear(torch.sign(x), torch.sign(self.weight))

    torch.manual_seed(seed)

    def conv(cin, cout, pool, **kwargs):
        layers = [SignConv2d(cin, cout, 3, padding=1, bias=False, **kwargs)]
        layers += [nn.MaxPool2d(2)] if pool else []
        return layers + [nn.BatchNorm2d(cout), nn.Hardtanh()]

    net = nn.Sequential(
        *conv(3, 128, False, binary_input=False), *conv(128, 128, True),
        *conv(128, 256, False), *conv(256, 256, True),
        *conv(256, 512, False), *conv(512, 512, True),
        nn.Flatten(),
        SignLinear(512 * 4 * 4, 1024, bias=False), nn.BatchNorm1d(1024), nn.Hardtanh(),
        SignLinear(1024, 1024, bias=False), nn.BatchNorm1d(1024), nn.Hardtanh(),
        SignLinear(1024, 10, bias=False), nn.BatchNorm1d(10),
    )
    for module in net.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.running_mean.uniform_(-8, 8)
            module.running_var.uniform_(1, 20)
            module.weight.data.uniform_(0.3, 1.5)
            module.bias.data.uniform_(-1, 1)
    return net.eval()


def write_mixer(path: str) -> None:
    import onnx

    onnx.save(mixer_model(), path)


def write_binarynet(path: str) -> None:
    import torch

    torch.onnx.export(binarynet(), torch.randn(1, 3, 32, 32), path, opset_version=17, dynamo=False, input_names=["image"])


def write_bibert(path: str) -> None:
    from bibert import BiBertLayer, export

    export(path, BiBertLayer(256, 4, 1024), 64, 256)


MODELS = {"mixer": write_mixer, "binarynet": write_binarynet, "bibert": write_bibert}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(MODELS), help="which example")
    parser.add_argument("output", help="the ONNX file to write")
    args = parser.parse_args()
    from bnn_tvm.errors import BnnError
    from bnn_tvm.atomic_files import atomic_write

    try:
        atomic_write(args.output, MODELS[args.model])
    except BnnError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
