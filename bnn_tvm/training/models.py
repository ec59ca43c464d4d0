"""Model zoo: each name builds a binarized model and its float twin (same layers, float values).

Every builder takes ``binary`` (False: the float twin, where each input quantizer becomes a
hardtanh and weights stay float), the activation and kernel quantizer names, and the number of
classes. ``build(name, ...)`` fills in the zoo's defaults for whatever is not given.

| name | input | layout | default quantizers (input / kernel) |
| --- | --- | --- | --- |
| digits | 1x8x8 | float stem, 2 binary 3x3 convs, binary classifier | ste_sign / ste_sign |
| bmlp | 1x8x8 | float first dense, 2 binary denses, binary classifier | ste_sign / ste_sign |
| vgg_small | 3x32x32 | VGG-Small (LQ-Nets), float first conv and classifier | ste_sign / ste_sign |
| resnet20 | 3x32x32 | CIFAR ResNet-20, shortcut around every binary conv | ede_sign / libra_pb_weight (IR-Net) |
| reactnet_block | 3x32x32 | float stem, a ReActNet block and a reduction block | rsign / magnitude_aware_sign |
| birealnet18 | 3x224x224 | Bi-Real ResNet-18, float stem, shortcuts, classifier | approx_sign / magnitude_aware_sign |
| bibert_layer | 64x256 | a BiBERT encoder layer (hidden 256, 4 heads, FFN 1024), Bi-Attention | torch.sign (its own) |
| bipointnet | 1024x3 | BiPointNet classifier, float stem and classifier, 40 classes | torch.sign (its own) |
| dfsmn | 1x32x32 | BiBench's DFSMN (keyword spotting, 8 memory blocks), float stem and classifier | ste sign (its own) |

The last three are written as their papers' public code writes them (``published_models``): their
binarizers are their own, so they take no quantizer options. No zoo model ships trained weights
except the digits checkpoint: the zoo exports seeded random weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from . import published_models, quantizers
from ..errors import BnnError
from .layers import BinaryActivation, BinaryConv2d, BinaryLinear

# Names usable as ``--quantizer`` (activations) and ``--kernel-quantizer`` (weights).


@dataclass(frozen=True)
class Precision:
    """How a model's binary layers are made; the float twin makes plain layers in their place."""

    binary: bool = True
    input_quantizer: str | None = "ste_sign"
    kernel_quantizer: str | None = "ste_sign"

    def conv(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Module:
        if self.binary:
            return BinaryConv2d(
                cin, cout, kernel, stride, padding,
                input_quantizer=self.input_quantizer, kernel_quantizer=self.kernel_quantizer,
            )
        return nn.Sequential(nn.Hardtanh(), nn.Conv2d(cin, cout, kernel, stride, padding, bias=False))

    def linear(self, fin: int, fout: int) -> nn.Module:
        if self.binary:
            return BinaryLinear(fin, fout, input_quantizer=self.input_quantizer, kernel_quantizer=self.kernel_quantizer)
        return nn.Sequential(nn.Hardtanh(), nn.Linear(fin, fout, bias=False))

    def activation(self, channels: int) -> nn.Module:
        """A binarizer as its own layer (before a max-pool); hardtanh in the float twin."""
        return BinaryActivation(self.input_quantizer, channels) if self.binary else nn.Hardtanh()


def digits(
    binary: bool = True, input_quantizer: str = "ste_sign", kernel_quantizer: str = "ste_sign", num_classes: int = 10
) -> nn.Module:
    """The default model, for 1x8x8 digits: float stem, two binary 3x3 convs, binary classifier.

    Channel counts (48, 40) are deliberately not multiples of 32: packing pads them.
    The second binary conv has stride 2 (8x8 -> 4x4). The float twin replaces every quantizer by
    a hardtanh activation and keeps float weights. (Layer order and names are those of the
    bundled checkpoint ``bnn_tvm/data/digits.pt``: do not change them.)
    """
    quant = input_quantizer if binary else None
    kquant = kernel_quantizer if binary else None

    def act():
        return nn.Identity() if binary else nn.Hardtanh()

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        act(),
        BinaryConv2d(32, 48, 3, padding=1, input_quantizer=quant, kernel_quantizer=kquant),
        nn.BatchNorm2d(48),
        act(),
        BinaryConv2d(48, 40, 3, stride=2, padding=1, input_quantizer=quant, kernel_quantizer=kquant),
        nn.BatchNorm2d(40),
        act(),
        nn.Flatten(),
        BinaryLinear(40 * 4 * 4, num_classes, input_quantizer=quant, kernel_quantizer=kquant),
        nn.BatchNorm1d(num_classes),
    )


def bmlp(
    binary: bool = True, input_quantizer: str = "ste_sign", kernel_quantizer: str = "ste_sign", num_classes: int = 10
) -> nn.Module:
    """Binarized MLP (Courbariaux et al. 2016 style) on flattened 1x8x8 images.

    The first dense sees raw pixels, so it stays float (binarizing pixels would throw the image
    away); the two hidden denses (256 units) and the classifier are binary, each followed by BN.
    """
    p = Precision(binary, input_quantizer, kernel_quantizer)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 256, bias=False),
        nn.BatchNorm1d(256),
        p.linear(256, 256),
        nn.BatchNorm1d(256),
        p.linear(256, 256),
        nn.BatchNorm1d(256),
        p.linear(256, num_classes),
        nn.BatchNorm1d(num_classes),
    )


def vgg_small(
    binary: bool = True, input_quantizer: str = "ste_sign", kernel_quantizer: str = "ste_sign", num_classes: int = 10
) -> nn.Module:
    """VGG-Small (LQ-Nets / Larq) for 3x32x32: 128-128-M-256-256-M-512-512-M, float first conv
    and classifier.

    Each max-pool follows conv -> BN -> sign, so it pools binary values (the max of ±1 values is
    an OR of bits, which runs on packed words); the next conv's own binarizer is then the
    identity on those ±1 values.
    """
    p = Precision(binary, input_quantizer, kernel_quantizer)

    def pooled(cin, cout):
        return [p.conv(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), p.activation(cout), nn.MaxPool2d(2)]

    return nn.Sequential(
        nn.Conv2d(3, 128, 3, padding=1, bias=False),
        nn.BatchNorm2d(128),
        *pooled(128, 128),
        p.conv(128, 256, 3, padding=1),
        nn.BatchNorm2d(256),
        *pooled(256, 256),
        p.conv(256, 512, 3, padding=1),
        nn.BatchNorm2d(512),
        *pooled(512, 512),
        nn.Flatten(),
        nn.Linear(512 * 4 * 4, num_classes, bias=False),
        nn.BatchNorm1d(num_classes),
    )


class ShortcutConv(nn.Module):
    """Bi-Real unit: ``BN(conv3x3(q(x))) + shortcut(x)``, the shortcut carrying real values.

    With a stride or a channel change the shortcut is Bi-Real's downsampling path: 2x2 average
    pool (stride 2 only), float 1x1 conv, BN.
    """

    def __init__(self, cin: int, cout: int, stride: int, p: Precision):
        super().__init__()
        self.conv = p.conv(cin, cout, 3, stride, 1)
        self.bn = nn.BatchNorm2d(cout)
        if stride == 1 and cin == cout:
            self.shortcut = nn.Identity()
        else:
            pool = [nn.AvgPool2d(2)] if stride == 2 else []
            self.shortcut = nn.Sequential(*pool, nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + self.shortcut(x)


def _shortcut_stages(widths: list[int], units_per_stage: int, cin: int, p: Precision) -> list[nn.Module]:
    """Stages of shortcut units; every stage after the first starts with stride 2."""
    layers = []
    for stage, width in enumerate(widths):
        for unit in range(units_per_stage):
            stride = 2 if stage > 0 and unit == 0 else 1
            layers.append(ShortcutConv(cin, width, stride, p))
            cin = width
    return layers


def resnet20(
    binary: bool = True, input_quantizer: str = "ede_sign", kernel_quantizer: str = "libra_pb_weight",
    num_classes: int = 10,
) -> nn.Module:
    """ResNet-20 for 3x32x32 (He et al., CIFAR layout: 16-32-64 channels, 3 blocks per stage).

    As in IR-Net's and Bi-Real's binary ResNets, every binary 3x3 conv has its own real-valued
    shortcut; the stem conv, the downsampling 1x1 convs and the classifier are float.
    """
    p = Precision(binary, input_quantizer, kernel_quantizer)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        *_shortcut_stages([16, 32, 64], 6, 16, p),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )


def birealnet18(
    binary: bool = True, input_quantizer: str = "approx_sign", kernel_quantizer: str = "magnitude_aware_sign",
    num_classes: int = 1000,
) -> nn.Module:
    """Bi-Real Net ResNet-18 (Liu et al., ECCV 2018) for 3x224x224.

    Float 7x7 stem + BN + max-pool, 16 binary 3x3 convs each with a real-valued shortcut
    (64-128-256-512 channels), Bi-Real downsampling shortcuts (avg-pool, float 1x1 conv, BN),
    global average pool and a float classifier (1000 classes by default, ImageNet's).
    """
    p = Precision(binary, input_quantizer, kernel_quantizer)
    return nn.Sequential(
        nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(64),
        nn.MaxPool2d(3, stride=2, padding=1),
        *_shortcut_stages([64, 128, 256, 512], 4, 64, p),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(512, num_classes),
    )


class ReActBlock(nn.Module):
    """ReActNet basic block (Liu et al., ECCV 2020), MobileNet-V1 layout with full convs.

    ``y = RPReLU(BN(conv3x3(RSign(x))) + shortcut(x))``, then
    ``z = RPReLU(BN(conv1x1(RSign(y))) + y)``. In a reduction block (stride 2, channels doubled)
    the shortcut is a 2x2 average pool and the 1x1 part is two convs C -> C whose outputs, each
    plus ``y``, are concatenated. (ReActNet shares one RSign between those two convs; here each
    has its own, so that every binary conv carries its binarizer.)
    """

    def __init__(self, cin: int, cout: int, stride: int, p: Precision):
        super().__init__()
        if cout not in (cin, 2 * cin):
            raise ValueError(f"a ReActNet block keeps or doubles the channels, got {cin} -> {cout}")
        self.conv3x3 = p.conv(cin, cin, 3, stride, 1)
        self.bn3x3 = nn.BatchNorm2d(cin)
        self.pool = nn.AvgPool2d(2) if stride == 2 else nn.Identity()
        self.act1 = quantizers.RPReLU(cin)
        self.pointwise = nn.ModuleList(p.conv(cin, cin, 1) for _ in range(cout // cin))
        self.pointwise_bn = nn.ModuleList(nn.BatchNorm2d(cin) for _ in range(cout // cin))
        self.act2 = quantizers.RPReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn3x3(self.conv3x3(x)) + self.pool(x))
        parts = [bn(conv(y)) + y for conv, bn in zip(self.pointwise, self.pointwise_bn)]
        return self.act2(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))


def reactnet_block(
    binary: bool = True, input_quantizer: str = "rsign", kernel_quantizer: str = "magnitude_aware_sign",
    num_classes: int = 10,
) -> nn.Module:
    """A ReActNet-style network for 3x32x32: float stem (32 ch), one normal ReActNet block,
    one reduction block (32 -> 64 ch, 32x32 -> 16x16), global average pool, float classifier."""
    p = Precision(binary, input_quantizer, kernel_quantizer)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        ReActBlock(32, 32, 1, p),
        ReActBlock(32, 64, 2, p),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )


@dataclass(frozen=True)
class ZooEntry:
    builder: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    input_quantizer: str | None  # None: the model's own binarizers (a published form), no options
    kernel_quantizer: str | None
    num_classes: int | None  # None: not a classifier

    @property
    def fixed_form(self) -> bool:
        return self.input_quantizer is None


ZOO: dict[str, ZooEntry] = {
    "digits": ZooEntry(digits, (1, 8, 8), "ste_sign", "ste_sign", 10),
    "bmlp": ZooEntry(bmlp, (1, 8, 8), "ste_sign", "ste_sign", 10),
    "vgg_small": ZooEntry(vgg_small, (3, 32, 32), "ste_sign", "ste_sign", 10),
    "resnet20": ZooEntry(resnet20, (3, 32, 32), "ede_sign", "libra_pb_weight", 10),
    "reactnet_block": ZooEntry(reactnet_block, (3, 32, 32), "rsign", "magnitude_aware_sign", 10),
    "birealnet18": ZooEntry(birealnet18, (3, 224, 224), "approx_sign", "magnitude_aware_sign", 1000),
    "bibert_layer": ZooEntry(published_models.bibert_layer, (64, 256), None, None, None),
    "bipointnet": ZooEntry(published_models.bipointnet, (1024, 3), None, None, 40),
    "dfsmn": ZooEntry(published_models.dfsmn, (1, 32, 32), None, None, 12),
}


def entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise BnnError(f"unknown model {name!r}; the zoo has: {', '.join(sorted(ZOO))}")
    return ZOO[name]


def check_quantizers(input_quantizer: str | None, kernel_quantizer: str | None) -> None:
    """Fail with the option at fault when a quantizer name does not fit its role."""
    activation, weight = quantizers.names("activation"), quantizers.names("weight")
    if input_quantizer is not None and input_quantizer.lower() not in activation:
        raise BnnError(f"--quantizer {input_quantizer!r} is not an activation quantizer; "
                       f"choose one of: {', '.join(activation)}")
    if kernel_quantizer is not None and kernel_quantizer.lower() not in weight:
        raise BnnError(f"--kernel-quantizer {kernel_quantizer!r} is not a weight quantizer; "
                       f"choose one of: {', '.join(weight)}")


def options(name: str, input_quantizer=None, kernel_quantizer=None, num_classes=None) -> dict:
    """The full build options of a zoo model: the given ones, the zoo's defaults for the rest."""
    zoo = entry(name)
    if zoo.fixed_form:
        if input_quantizer or kernel_quantizer:
            raise BnnError(f"{name} binarizes as its published code does: it takes no quantizer options")
        return {"input_quantizer": None, "kernel_quantizer": None, "num_classes": num_classes or zoo.num_classes}
    check_quantizers(input_quantizer, kernel_quantizer)
    return {
        "input_quantizer": (input_quantizer or zoo.input_quantizer).lower(),
        "kernel_quantizer": (kernel_quantizer or zoo.kernel_quantizer).lower(),
        "num_classes": num_classes or zoo.num_classes,
    }


def build(
    name: str, binary: bool = True, input_quantizer: str | None = None, kernel_quantizer: str | None = None,
    num_classes: int | None = None,
) -> nn.Module:
    """The zoo model ``name`` (binarized, or its float twin with ``binary=False``)."""
    return entry(name).builder(binary=binary, **options(name, input_quantizer, kernel_quantizer, num_classes))


def input_shape(name: str) -> tuple[int, ...]:
    """Per-sample input shape of a zoo model: (C, H, W) for images, (tokens, features) for
    BiBERT, (points, 3) for BiPointNet."""
    return entry(name).input_shape
