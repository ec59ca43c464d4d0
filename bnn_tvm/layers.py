"""Binary layers: a conv or dense whose input and weights go through named quantizers.

Training uses each quantizer's gradient estimator; in eval mode (and so in ONNX export) the
quantizers are plain ``where(x >= 0, 1, -1)`` tensor ops that the compiler recognises. Latent
weights are clipped to [-1, 1] after each step (``clip_latent_weights``), as Larq's
``weight_clip`` constraint does: beyond that range the straight-through gradient is zero anyway.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import quantizers

PAD_VALUES = (0.0, 1.0, -1.0)


class _BinaryMixin:
    def _setup_quantizers(self, input_quantizer, kernel_quantizer, latent_clip):
        self.input_quantizer = quantizers.get(input_quantizer)
        self.kernel_quantizer = quantizers.get(kernel_quantizer)
        self.latent_clip = latent_clip

    def quantized_weight(self) -> torch.Tensor:
        return self.weight if self.kernel_quantizer is None else self.kernel_quantizer(self.weight)

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)

    @torch.no_grad()
    def clip_latent_weights(self) -> None:
        if self.latent_clip is not None:
            self.weight.clamp_(-self.latent_clip, self.latent_clip)


class BinaryConv2d(_BinaryMixin, nn.Conv2d):
    """``conv2d(q_in(x), q_w(W))``.

    ``pad_value`` is what the *binarized* input is padded with: 0 (PyTorch's zero padding, which
    is neither +1 nor -1; the compiler corrects for it exactly), +1 or -1 (an explicit ``Pad``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
        input_quantizer="ste_sign",
        kernel_quantizer="ste_sign",
        pad_value: float = 0.0,
        latent_clip: float | None = 1.0,
    ):
        if pad_value not in PAD_VALUES:
            raise ValueError(f"pad_value must be one of {PAD_VALUES}, got {pad_value}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        self._setup_quantizers(input_quantizer, kernel_quantizer, latent_clip)
        self.pad_value = float(pad_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quantized_input(x)
        weight = self.quantized_weight()
        if self.pad_value == 0.0:
            return F.conv2d(x, weight, self.bias, self.stride, self.padding)
        ph, pw = self.padding
        x = F.pad(x, (pw, pw, ph, ph), value=self.pad_value)
        return F.conv2d(x, weight, self.bias, self.stride, 0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pad_value={self.pad_value}"


class BinaryLinear(_BinaryMixin, nn.Linear):
    """``linear(q_in(x), q_w(W))``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        input_quantizer="ste_sign",
        kernel_quantizer="ste_sign",
        latent_clip: float | None = 1.0,
    ):
        super().__init__(in_features, out_features, bias=bias)
        self._setup_quantizers(input_quantizer, kernel_quantizer, latent_clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantized_input(x), self.quantized_weight(), self.bias)


def clip_latent_weights(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, _BinaryMixin):
            module.clip_latent_weights()
