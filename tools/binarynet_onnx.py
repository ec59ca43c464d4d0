#!/usr/bin/env python3
"""Write BinaryNet's CIFAR-10 network as its PyTorch code exports it (seeded random weights), for `bench`.

    python tools/binarynet_onnx.py binarynet.onnx
    python -m bnn_tvm bench binarynet.onnx --target x86 --threads 1

Courbariaux et al. 2016 (arXiv:1602.02830), the layers of the widely used PyTorch port: each
binary layer applies ``torch.sign`` to its input and weights in ``forward`` (so the ONNX graph
holds ``Sign`` nodes, which output 0 at 0), then BatchNorm and Hardtanh; the first conv reads
the float image. 128-128-M-256-256-M-512-512-M, then dense 1024-1024-10, on 32x32 RGB.
BatchNorm statistics are random too, so the thresholds are not trivial.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="the ONNX file to write")
    args = parser.parse_args()
    import torch

    from bnn_tvm.errors import BnnError
    from bnn_tvm.io import atomic_write

    net = binarynet()
    try:
        atomic_write(args.output, lambda tmp: torch.onnx.export(
            net, torch.randn(1, 3, 32, 32), tmp, opset_version=17, dynamo=False, input_names=["image"]))
    except BnnError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
