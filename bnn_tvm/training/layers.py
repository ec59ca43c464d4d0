"""Binary layers: a conv or dense whose input and weights go through named quantizers.

Training uses each quantizer's gradient estimator; in eval mode (and so in ONNX export) the
quantizers are plain ``where(x >= 0, 1, -1)`` tensor ops that the compiler recognises. Latent
weights are clipped to [-1, 1] after each step (``clip_latent_weights``), as Larq's
``weight_clip`` constraint does: beyond that range the straight-through gradient is zero anyway.

Kernel quantizers with a per-output-channel scale (``channel_scale``: ``magnitude_aware_sign``,
``libra_pb_weight``) compute ``alpha_c * sign(W_c)``. In eval mode the layer computes the same value as
``alpha * conv(x, sign(W))``: the conv keeps ±1 weights (a binary kernel for the compiler) and
the scale is a separate per-channel ``Mul`` after it, which a following batch norm or binarizer
threshold can absorb.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from . import quantizers

PAD_VALUES = (0.0, 1.0, -1.0)


def make_quantizer(spec, channels: int) -> nn.Module | None:
    """Resolve a quantizer name (or module, or None); per-channel ones (RSign) get ``channels``."""
    if not isinstance(spec, str):
        return quantizers.get(spec)
    cls = quantizers.REGISTRY.get(spec.lower())
    if cls is not None and "num_channels" in inspect.signature(cls.__init__).parameters:
        return quantizers.get(spec, num_channels=channels)
    return quantizers.get(spec)


class _BinaryMixin:
    def _setup_quantizers(self, input_quantizer, kernel_quantizer, latent_clip, in_channels):
        self.input_quantizer = make_quantizer(input_quantizer, in_channels)
        self.kernel_quantizer = make_quantizer(kernel_quantizer, self.weight.shape[0])
        self.latent_clip = latent_clip

    @property
    def input_bits(self) -> int:
        return quantizers.precision(self.input_quantizer)

    @property
    def weight_bits(self) -> int:
        return quantizers.precision(self.kernel_quantizer)

    @property
    def has_channel_scale(self) -> bool:
        return getattr(self.kernel_quantizer, "channel_scale", False)

    def quantized_weight(self) -> torch.Tensor:
        return self.weight if self.kernel_quantizer is None else self.kernel_quantizer(self.weight)

    def factored_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(W_q, None)``, or ``(sign(W_q), alpha)`` for a per-channel-scaled kernel quantizer.

        ``W_q = alpha_c * (±1)``, so ``alpha_c = max |W_q[c]|`` recovers the scale exactly and
        ``hard_sign(W_q)`` the signs (a zero channel gets scale 0, so its signs do not matter).
        """
        weight = self.quantized_weight()
        if not self.has_channel_scale:
            return weight, None
        scale = weight.reshape(weight.shape[0], -1).abs().amax(dim=1)
        return quantizers.hard_sign(weight), scale

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)

    @torch.no_grad()
    def clip_latent_weights(self) -> None:
        if self.latent_clip is not None:
            self.weight.clamp_(-self.latent_clip, self.latent_clip)


def _scaled(y: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """``y * scale[c] + bias[c]`` along dim 1 (either may be absent)."""
    shape = (1, -1) + (1,) * (y.dim() - 2)
    if scale is not None:
        y = y * scale.view(shape)
    if bias is not None:
        y = y + bias.view(shape)
    return y


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
        self._setup_quantizers(input_quantizer, kernel_quantizer, latent_clip, in_channels)
        self.pad_value = float(pad_value)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.pad_value == 0.0:
            return F.conv2d(x, weight, bias, self.stride, self.padding)
        ph, pw = self.padding
        x = F.pad(x, (pw, pw, ph, ph), value=self.pad_value)
        return F.conv2d(x, weight, bias, self.stride, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quantized_input(x)
        if self.training or not self.has_channel_scale:
            return self._conv(x, self.quantized_weight(), self.bias)
        signs, scale = self.factored_weight()
        return _scaled(self._conv(x, signs, None), scale, self.bias)

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
        self._setup_quantizers(input_quantizer, kernel_quantizer, latent_clip, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quantized_input(x)
        if self.training or not self.has_channel_scale:
            return F.linear(x, self.quantized_weight(), self.bias)
        signs, scale = self.factored_weight()
        return _scaled(F.linear(x, signs), scale, self.bias)


class BinaryActivation(nn.Module):
    """A quantizer as a layer of its own, e.g. sign before a max-pool (max of ±1 is an OR of bits)."""

    def __init__(self, quantizer="ste_sign", channels: int | None = None):
        super().__init__()
        self.quantizer = make_quantizer(quantizer, channels)

    @property
    def output_bits(self) -> int:
        return quantizers.precision(self.quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.quantizer is None else self.quantizer(x)


def clip_latent_weights(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, _BinaryMixin):
            module.clip_latent_weights()
