"""Single layers: ``--layer`` specs and their one-conv ONNX models."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ...errors import BnnError


# The 3x3 binary convolutions of a ResNet-18 at 224x224 (stage entry convs have stride 2).
RESNET18_LAYERS = (
    "conv3x3:64x56x56",
    "conv3x3:64x56x56,out=128,stride=2",
    "conv3x3:128x28x28",
    "conv3x3:128x28x28,out=256,stride=2",
    "conv3x3:256x14x14",
    "conv3x3:256x14x14,out=512,stride=2",
    "conv3x3:512x7x7",
)
LAYER_SYNTAX = "convKxK:CxHxW[,out=OC][,stride=S][,pad=P][,batch=N][,input=binary|ternary][,weights=binary|ternary|ttq]"
# input: Where(x >= 0, 1, -1), or Sign(x) with its zeros (torch.sign); weights: ±1, TWN's
# {-1, 0, +1} (a third of them 0), or TTQ's {-a, 0, +b} (the same zeros, a = 1.37, b = 0.61)
LAYER_KINDS = ("binary", "ternary")
WEIGHT_KINDS = (*LAYER_KINDS, "ttq")
TTQ_SCALES = (np.float32(0.61), np.float32(1.37))  # b, a: trained-looking, no common power-of-two grid


@dataclass(frozen=True)
class LayerSpec:
    """One binary conv layer: binarized input (or ``input="ternary"``: ``Sign(x)``, which is 0
    at 0), ±1 weights (or ``weights="ternary"``: a third of them 0; ``"ttq"``: those zeros, and
    ``+b``, ``-a`` for ±1), zero padding."""

    kernel: int
    channels: int
    height: int
    width: int
    out_channels: int
    stride: int = 1
    pad: int = 0
    batch: int = 1
    input: str = "binary"
    weights_kind: str = "binary"

    @classmethod
    def parse(cls, text: str) -> "LayerSpec":
        match = re.fullmatch(r"conv(\d+)x(\d+):(\d+)x(\d+)x(\d+)((?:,\w+=\w+)*)", text.strip())
        if match is None or match.group(1) != match.group(2):
            raise BnnError(f"--layer {text!r}: expected {LAYER_SYNTAX} (e.g. conv3x3:64x56x56)")
        kernel, channels, height, width = (int(match.group(i)) for i in (1, 3, 4, 5))
        options = dict(item.split("=") for item in match.group(6).split(",") if item)
        unknown = set(options) - {"out", "stride", "pad", "batch", "input", "weights"}
        if unknown:
            raise BnnError(f"--layer {text!r}: unknown option(s) {', '.join(sorted(unknown))}; syntax {LAYER_SYNTAX}")
        for key, kinds in (("input", LAYER_KINDS), ("weights", WEIGHT_KINDS)):
            if options.get(key, "binary") not in kinds:
                raise BnnError(f"--layer {text!r}: {key}={options[key]}: expected one of {', '.join(kinds)}")
        numbers = {key: value for key, value in options.items() if key not in ("input", "weights")}
        if not all(value.isdigit() for value in numbers.values()):
            raise BnnError(f"--layer {text!r}: sizes must be positive integers; syntax {LAYER_SYNTAX}")
        spec = cls(
            kernel, channels, height, width,
            out_channels=int(options.get("out", channels)),
            stride=int(options.get("stride", 1)),
            pad=int(options.get("pad", kernel // 2)),
            batch=int(options.get("batch", 1)),
            input=options.get("input", "binary"),
            weights_kind=options.get("weights", "binary"),
        )
        if min(kernel, channels, height, width, spec.out_channels, spec.stride, spec.batch) < 1 or spec.pad < 0:
            raise BnnError(f"--layer {text!r}: sizes must be positive")
        if spec.out_hw[0] < 1 or spec.out_hw[1] < 1:
            raise BnnError(f"--layer {text!r}: the kernel does not fit the padded input")
        return spec

    @property
    def name(self) -> str:
        text = f"conv{self.kernel}x{self.kernel}:{self.channels}x{self.height}x{self.width}"
        extras = [("out", self.out_channels, self.channels), ("stride", self.stride, 1),
                  ("pad", self.pad, self.kernel // 2), ("batch", self.batch, 1), ("input", self.input, "binary"),
                  ("weights", self.weights_kind, "binary")]
        return text + "".join(f",{key}={value}" for key, value, default in extras if value != default)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, self.height, self.width)

    @property
    def out_hw(self) -> tuple[int, int]:
        size = lambda n: (n + 2 * self.pad - self.kernel) // self.stride + 1  # noqa: E731
        return size(self.height), size(self.width)

    @property
    def binary_macs(self) -> int:
        oh, ow = self.out_hw
        return self.batch * oh * ow * self.out_channels * self.channels * self.kernel * self.kernel

    def weights(self, seed: int = 0) -> np.ndarray:
        shape = (self.out_channels, self.channels, self.kernel, self.kernel)
        normal = np.random.default_rng(seed).standard_normal(shape)
        if self.weights_kind in ("ternary", "ttq"):  # TWN's threshold: |w| < 0.43 (about a third) -> 0
            signs = np.where(np.abs(normal) < 0.43, 0.0, np.sign(normal)).astype(np.float32)
            if self.weights_kind == "ternary":
                return signs
            b, a = TTQ_SCALES
            return (b * (signs > 0) - a * (signs < 0)).astype(np.float32)
        return np.where(normal >= 0, 1.0, -1.0).astype(np.float32)

    def onnx_model(self, binary_input: bool = True, seed: int = 0):
        """The layer as ONNX: ``Where(x >= 0, 1, -1)`` (``Sign(x)`` for a ternary input; nothing
        unless ``binary_input``) + ``Conv``."""
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        inits = [numpy_helper.from_array(self.weights(seed), "w")]
        nodes = []
        conv_input = "x"
        if binary_input and self.input == "ternary":
            nodes.append(helper.make_node("Sign", ["x"], ["x_sign"], name="sign"))
            conv_input = "x_sign"
        elif binary_input:
            inits += [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("zero", 0), ("one", 1), ("minus_one", -1))]
            nodes += [
                helper.make_node("GreaterOrEqual", ["x", "zero"], ["is_positive"], name="binarize_compare"),
                helper.make_node("Where", ["is_positive", "one", "minus_one"], ["x_bin"], name="binarize"),
            ]
            conv_input = "x_bin"
        nodes.append(helper.make_node(
            "Conv", [conv_input, "w"], ["y"], name="conv", kernel_shape=[self.kernel] * 2,
            strides=[self.stride] * 2, pads=[self.pad] * 4,
        ))
        graph = helper.make_graph(
            nodes, "binary_layer",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(self.input_shape))],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [self.batch, self.out_channels, *self.out_hw])],
            initializer=inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 9
        onnx.checker.check_model(model)
        return model

    def torch_float_twin(self, seed: int = 0):
        import torch

        conv = torch.nn.Conv2d(self.channels, self.out_channels, self.kernel, self.stride, self.pad, bias=False)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(self.weights(seed)))
        return conv.eval()


def parse_layers(texts: list[str]) -> list[LayerSpec]:
    """``--layer`` values: layer specs, or ``resnet18`` for all of ResNet-18's 3x3 binary convs."""
    specs = []
    for text in texts:
        names = RESNET18_LAYERS if text.strip().lower() == "resnet18" else (text,)
        specs += [LayerSpec.parse(name) for name in names]
    return specs
