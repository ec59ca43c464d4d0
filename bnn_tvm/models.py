"""Model zoo: each name builds a binarized model and its float twin (same layers, float values)."""

from __future__ import annotations

from typing import Callable

from torch import nn

from .errors import BnnError
from .layers import BinaryConv2d, BinaryLinear


def digits(binary: bool = True) -> nn.Module:
    """The default model, for 1x8x8 digits: float stem, two binary 3x3 convs, binary classifier.

    Channel counts (48, 40) are deliberately not multiples of 32: packing pads them.
    The second binary conv has stride 2 (8x8 -> 4x4). The float twin replaces every quantizer by
    a hardtanh activation and keeps float weights.
    """
    quant = "ste_sign" if binary else None

    def act():
        return nn.Identity() if binary else nn.Hardtanh()

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        act(),
        BinaryConv2d(32, 48, 3, padding=1, input_quantizer=quant, kernel_quantizer=quant),
        nn.BatchNorm2d(48),
        act(),
        BinaryConv2d(48, 40, 3, stride=2, padding=1, input_quantizer=quant, kernel_quantizer=quant),
        nn.BatchNorm2d(40),
        act(),
        nn.Flatten(),
        BinaryLinear(40 * 4 * 4, 10, input_quantizer=quant, kernel_quantizer=quant),
        nn.BatchNorm1d(10),
    )


ZOO: dict[str, tuple[Callable[..., nn.Module], tuple[int, ...]]] = {
    "digits": (digits, (1, 8, 8)),
}


def build(name: str, binary: bool = True) -> nn.Module:
    if name not in ZOO:
        raise BnnError(f"unknown model {name!r}; the zoo has: {', '.join(sorted(ZOO))}")
    return ZOO[name][0](binary=binary)


def input_shape(name: str) -> tuple[int, ...]:
    build(name)  # validates the name
    return ZOO[name][1]
