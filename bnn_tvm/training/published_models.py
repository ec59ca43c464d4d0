"""Zoo models written as their papers' public PyTorch code writes them (``torch.sign``
binarizers, straight-through estimators left in the forward pass), each with a float twin.

* BiBERT (Qin et al., ICLR 2022): one encoder layer, binary Q/K/V/output/FFN linears
  (``sign`` of the input, ``sign(W)`` times the mean ``|W|`` per output), ``sign`` on the heads,
  Bi-Attention (``bool(scores / sqrt(d))`` in place of softmax), GELU, LayerNorm.
* BiPointNet (Qin et al., ICLR 2021): PointNet's shared MLPs as linear layers on ``[B, N, C]``
  points, layer-wise scale recovery, max over the points.
* DFSMN as BiBench (Qin et al., ICML 2023) binarizes it for keyword spotting: a 2-D conv front
  end on a log-mel spectrogram, 8 DFSMN memory blocks (memory conv + skip, 1x1 conv FC
  transform + skip), a float classifier. BiBench's ``BNNConv1d`` does not pass ``groups`` on, so
  the memory conv, depthwise in the float model, is a full 128 -> 128 conv over 5 frames.

The binary layers carry ``input_bits``/``weight_bits`` (1) so that ``summary`` counts them as
binary. Weights are random (seeded by the caller): no trained binarized weights can be had
offline; latency and exactness do not depend on them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


# ---------------------------------------------------------------------------------------------
# BiBERT
class BinaryLinear(nn.Linear):
    """BiBERT's binary linear: ``linear(sign(x), sign(W) * mean|W| per output, b)``; unscaled
    (``scaled = False``, BinaryNet's form): ``linear(sign(x), sign(W), b)``."""

    scaled = True
    input_bits = weight_bits = 1

    @property
    def has_channel_scale(self) -> bool:
        return self.scaled

    def forward(self, x):
        weight = torch.sign(self.weight)
        if self.scaled:
            weight = weight * self.weight.abs().mean(dim=1, keepdim=True).detach()
        return F.linear(torch.sign(x), weight, self.bias)


class BinaryMatMul(nn.Module):
    """``a @ b`` of two binarized tensors (attention scores, ``P @ Sign(V)``): a module only so
    that ``summary`` sees its MACs."""

    input_bits = weight_bits = 1

    def forward(self, a, b):
        return torch.matmul(a, b)

    @staticmethod
    def summary_macs(in_shape, out_shape) -> int:
        return math.prod(out_shape[1:]) * in_shape[-1]


class BiAttention(nn.Module):
    """Multi-head Bi-Attention; ``outputs="all"`` also returns the scores and the attention bits.
    ``binary=False``: the float twin, BERT's attention (float linears, softmax)."""

    def __init__(self, hidden: int = 64, heads: int = 2, outputs: str = "context", mask=None, form: str = ">=",
                 binary: bool = True):
        super().__init__()
        self.heads, self.depth = heads, hidden // heads
        linear = BinaryLinear if binary else nn.Linear
        self.q, self.k, self.v = (linear(hidden, hidden) for _ in range(3))
        self.scores, self.context = BinaryMatMul(), BinaryMatMul()
        self.outputs = outputs
        self.mask = mask  # added to the scaled scores: BERT's extended mask, 0 or -10000 per key, [1, 1, 1, T]
        self.form = form
        self.binary = binary

    def split(self, x):
        batch, tokens, _ = x.shape
        return x.view(batch, tokens, self.heads, self.depth).permute(0, 2, 1, 3)

    def forward(self, x):
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        if not self.binary:
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.depth)
            scores = scores if self.mask is None else scores + self.mask
            context = torch.matmul(scores.softmax(dim=-1), v).permute(0, 2, 1, 3).contiguous()
            return context.view(context.shape[0], context.shape[1], -1)
        q, k, v = torch.sign(q), torch.sign(k), torch.sign(v)
        raw = self.scores(q, k.transpose(-1, -2))
        scores = raw / math.sqrt(self.depth)
        if self.mask is not None:
            scores = scores + self.mask
        if self.form == "where":
            bits = torch.where(scores >= 0, torch.ones_like(scores), torch.zeros_like(scores))
        else:
            bits = (scores > 0 if self.form == ">" else scores >= 0).float()
        context = self.context(bits, v).permute(0, 2, 1, 3).contiguous()
        context = context.view(context.shape[0], context.shape[1], -1)
        return (context, raw, bits) if self.outputs == "all" else context


class BiBertLayer(nn.Module):
    """One encoder layer: Bi-Attention, binary output linear, residual + LayerNorm, binary FFN
    with GELU, residual + LayerNorm. Input ``[B, tokens, hidden]``."""

    def __init__(self, hidden: int = 256, heads: int = 4, ffn: int = 1024, binary: bool = True):
        super().__init__()
        linear = BinaryLinear if binary else nn.Linear
        self.attention = BiAttention(hidden, heads, binary=binary)
        self.out = linear(hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.up, self.down = linear(hidden, ffn), linear(ffn, hidden)
        self.norm2 = nn.LayerNorm(hidden)

    def forward(self, x):
        h = self.norm1(x + self.out(self.attention(x)))
        return self.norm2(h + self.down(F.gelu(self.up(h))))


# ---------------------------------------------------------------------------------------------
# BiPointNet
class BinaryQuantize(torch.autograd.Function):
    """BiPointNet's binarizer: ``sign`` forward, a clipped identity backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).float()


class BiLinearLSR(nn.Linear):
    """BiPointNet's binary linear layer with layer-wise scale recovery: ``sign(x)`` times the
    centred weights' signs, times one learned scalar per layer. ``scale_weights``: the scalar
    multiplies the binarized weights (``±alpha`` weights, whose float products ONNX Runtime sums
    with rounding) instead of the layer's output (an exact integer sum, scaled once)."""

    input_bits = weight_bits = 1
    has_channel_scale = False  # one scalar, counted as a parameter

    def __init__(self, cin, cout, scale_weights=False):
        super().__init__(cin, cout, bias=False)
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.scale_weights = scale_weights

    def forward(self, x):
        w = BinaryQuantize.apply(self.weight - self.weight.mean())
        if self.scale_weights:
            return F.linear(BinaryQuantize.apply(x), w * self.scale)
        return F.linear(BinaryQuantize.apply(x), w) * self.scale


class BiPointNet(nn.Module):
    """A BiPointNet classifier as its public code writes PointNet: shared MLPs as linear layers on
    ``[B, N, C]`` points, each batch norm between ``transpose(1, 2)``s, max over the points (the
    EMA-max aggregation in eval), a binary head and a float first and last layer. ``binary=False``
    is the float twin (``nn.Linear`` everywhere). Input ``[B, N, 3]``."""

    def __init__(self, classes=40, widths=(64, 64, 64, 128, 1024), head=(512, 256), binary=True, scale_weights=False):
        super().__init__()
        if binary:
            linear = lambda cin, cout: BiLinearLSR(cin, cout, scale_weights)  # noqa: E731
        else:
            linear = lambda cin, cout: nn.Linear(cin, cout, bias=False)  # noqa: E731
        self.stem = nn.Linear(3, widths[0])
        self.mlp = nn.ModuleList(linear(cin, cout) for cin, cout in zip(widths, widths[1:]))
        self.bns = nn.ModuleList(nn.BatchNorm1d(c) for c in widths)
        self.head = nn.ModuleList(linear(cin, cout) for cin, cout in zip((widths[-1],) + head, head))
        self.head_bns = nn.ModuleList(nn.BatchNorm1d(c) for c in head)
        self.fc = nn.Linear(head[-1], classes)
        self.act = nn.Hardtanh() if binary else nn.ReLU()

    def forward(self, x):
        x = self.act(self.bns[0](self.stem(x).transpose(1, 2)).transpose(1, 2))
        for i, (layer, bn) in enumerate(zip(self.mlp, self.bns[1:])):
            x = bn(layer(x).transpose(1, 2)).transpose(1, 2)
            x = x if i == len(self.mlp) - 1 else self.act(x)  # PointNet: no activation before the max
        x = torch.max(x, 1)[0]
        for layer, bn in zip(self.head, self.head_bns):
            x = self.act(bn(layer(x)))
        return self.fc(x)


def randomize_batch_norms(model: nn.Module, mean_std: float, gamma_std: float) -> nn.Module:
    """Batch-norm statistics and affine parameters as training would leave them, roughly (from
    the global torch generator: seed first)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_(0, mean_std)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.normal_(1, gamma_std)
            module.bias.data.normal_(0, 0.3)
    return model


# ---------------------------------------------------------------------------------------------
# DFSMN (BiBench's keyword-spotting model)
def _ste_sign(x):
    """BiBench's BNN binarizer: ``sign(x)`` forward, ``clamp(x)``'s gradient backward."""
    clipped = torch.clamp(x, -1.0, 1.0)
    return torch.sign(x).detach() - clipped.detach() + clipped


class BNNConv1d(nn.Conv1d):
    """BiBench's ``BNNConv1d``: ``conv1d(ste_sign(x), ste_sign(W))``, no bias, no groups."""

    input_bits = weight_bits = 1
    has_channel_scale = False

    def __init__(self, cin, cout, kernel_size, stride=1, padding=0):
        super().__init__(cin, cout, kernel_size, stride, padding, bias=False)

    def forward(self, x):
        return F.conv1d(_ste_sign(x), _ste_sign(self.weight), stride=self.stride, padding=self.padding)


class BNNConv2d(nn.Conv2d):
    """BiBench's ``BNNConv2d``: ``conv2d(ste_sign(x), ste_sign(W))`` (zero padding of the
    binarized input), no bias."""

    input_bits = weight_bits = 1
    has_channel_scale = False

    def __init__(self, cin, cout, kernel_size, stride=1, padding=0):
        super().__init__(cin, cout, kernel_size, stride, padding, bias=False)

    def forward(self, x):
        return F.conv2d(_ste_sign(x), _ste_sign(self.weight), stride=self.stride, padding=self.padding)


def _conv(binary: bool, dims: int, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0,
          groups: int = 1) -> nn.Module:
    """A binarized conv, or in the float twin a Hardtanh and a float conv of the same shape."""
    if binary:
        return (BNNConv1d if dims == 1 else BNNConv2d)(cin, cout, kernel, stride, padding)
    conv = nn.Conv1d if dims == 1 else nn.Conv2d
    return nn.Sequential(nn.Hardtanh(), conv(cin, cout, kernel, stride, padding, bias=False))


class DfsmnLayer(nn.Module):
    """A DFSMN memory block on ``[B, N, T]``: ``m = PReLU(BN(memory(pad(x)))) + x`` (the memory
    conv over ``left + 1 + right`` frames), then ``m + FC(m)`` with FC two 1x1 convs (N -> hidden
    -> N), each with BN and PReLU."""

    def __init__(self, hidden: int, memory: int, left: int, right: int, binary: bool = True):
        super().__init__()
        self.left, self.right = left, right
        self.memory = nn.Sequential(_conv(binary, 1, memory, memory, left + right + 1), nn.BatchNorm1d(memory),
                                    nn.PReLU())
        self.fc_trans = nn.Sequential(
            _conv(binary, 1, memory, hidden, 1), nn.BatchNorm1d(hidden), nn.PReLU(),
            _conv(binary, 1, hidden, memory, 1), nn.BatchNorm1d(memory), nn.PReLU(),
        )

    def forward(self, x):
        memory = self.memory(F.pad(x, [self.left, self.right])) + x
        return self.fc_trans(memory) + memory


class Dfsmn(nn.Module):
    """BiBench's DFSMN classifier on a ``[B, 1, n_mels, T]`` log-mel spectrogram: float 5x5 conv
    (stride 2) + BN + PReLU, binary 5x5 conv (stride 2) + BN + PReLU, the frames' features
    through a float linear (+ PReLU) to the memory size, ``layers`` memory blocks, flatten, float
    classifier. BiBench's configuration: 32 mels, 32 frames, 16 front-end channels, hidden 256,
    memory 128, 2 frames left and right, 8 blocks, 12 classes."""

    def __init__(self, classes: int = 12, n_mels: int = 32, frames: int = 32, layers: int = 8, front: int = 16,
                 kernel: int = 5, hidden: int = 256, memory: int = 128, left: int = 2, right: int = 2,
                 binary: bool = True):
        super().__init__()
        self.front_end = nn.Sequential(
            nn.Conv2d(1, front, kernel, stride=2, padding=kernel // 2, bias=False), nn.BatchNorm2d(front), nn.PReLU(),
            _conv(binary, 2, front, 2 * front, kernel, 2, kernel // 2), nn.BatchNorm2d(2 * front), nn.PReLU(),
        )
        self.fc1 = nn.Sequential(nn.Linear(2 * front * n_mels // 4, memory), nn.PReLU())
        self.backbone = nn.Sequential(*(DfsmnLayer(hidden, memory, left, right, binary) for _ in range(layers)))
        self.head = nn.Linear(memory * (frames // 4), classes)

    def forward(self, x):
        batch = x.shape[0]
        out = self.front_end(x)  # [B, C, n_mels / 4, T / 4]
        out = out.view(batch, -1, out.shape[3]).transpose(1, 2)  # [B, T', C * n_mels / 4]
        out = self.fc1(out).transpose(1, 2)  # [B, memory, T']
        out = self.backbone(out)
        return self.head(out.reshape(batch, -1))


# ---------------------------------------------------------------------------------------------
# Zoo builders: (binary, input_quantizer, kernel_quantizer, num_classes) like every zoo builder;
# the quantizers are these forms' own (``torch.sign``), so the zoo gives None.
def bibert_layer(binary: bool = True, input_quantizer=None, kernel_quantizer=None, num_classes=None) -> nn.Module:
    """One BiBERT encoder layer: hidden 256, 4 heads, FFN 1024, input ``[B, 64, 256]``."""
    return BiBertLayer(256, 4, 1024, binary=binary)


def bipointnet(binary: bool = True, input_quantizer=None, kernel_quantizer=None, num_classes=40) -> nn.Module:
    """A BiPointNet classifier on 1024 points, batch norms and layer scales as training would
    leave them."""
    model = randomize_batch_norms(BiPointNet(classes=num_classes, binary=binary), 2.0, 0.5)
    for module in model.modules():
        if isinstance(module, BiLinearLSR):
            module.scale.data.uniform_(0.05, 0.2)
    return model


def dfsmn(binary: bool = True, input_quantizer=None, kernel_quantizer=None, num_classes=12) -> nn.Module:
    """BiBench's binarized DFSMN (8 memory blocks) on 32 mels x 32 frames, batch norms as
    training would leave them."""
    return randomize_batch_norms(Dfsmn(classes=num_classes, binary=binary), 0.5, 0.3)
