"""BiBERT-style binarized attention and encoder layer (Qin et al., ICLR 2022), written as its
public PyTorch code writes them: binary linears (``sign`` of the input, ``sign(W)`` times the
mean ``|W|`` per output), ``sign`` on the Q, K and V heads, ``Sign(Q) @ Sign(K)^T / sqrt(d)``
(plus a mask), Bi-Attention's ``bool`` (``scores >= 0`` as 0/1 floats; ``form=">"``: ``scores >
0``, ``form="where"``: ``torch.where(scores >= 0, 1., 0.)``) in place of softmax, then ``P @
Sign(V)``. Random (seeded) weights.

``export(path, ...)`` writes the ONNX file with either of PyTorch's exporters.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class BinaryLinear(nn.Linear):
    """BiBERT's binary linear: ``linear(sign(x), sign(W) * mean|W| per output, b)``; unscaled
    (``scaled = False``, BinaryNet's form): ``linear(sign(x), sign(W), b)``."""

    scaled = True

    def forward(self, x):
        weight = torch.sign(self.weight)
        if self.scaled:
            weight = weight * self.weight.abs().mean(dim=1, keepdim=True).detach()
        return nn.functional.linear(torch.sign(x), weight, self.bias)


class BiAttention(nn.Module):
    """Multi-head Bi-Attention; ``outputs="all"`` also returns the scores and the attention bits."""

    def __init__(self, hidden: int = 64, heads: int = 2, outputs: str = "context", mask=None, form: str = ">="):
        super().__init__()
        self.heads, self.depth = heads, hidden // heads
        self.q, self.k, self.v = (BinaryLinear(hidden, hidden) for _ in range(3))
        self.outputs = outputs
        self.mask = mask  # added to the scaled scores: BERT's extended mask, 0 or -10000 per key, [1, 1, 1, T]
        self.form = form

    def split(self, x):
        batch, tokens, _ = x.shape
        return x.view(batch, tokens, self.heads, self.depth).permute(0, 2, 1, 3)

    def forward(self, x):
        q = torch.sign(self.split(self.q(x)))
        k = torch.sign(self.split(self.k(x)))
        v = torch.sign(self.split(self.v(x)))
        raw = torch.matmul(q, k.transpose(-1, -2))
        scores = raw / math.sqrt(self.depth)
        if self.mask is not None:
            scores = scores + self.mask
        if self.form == "where":
            bits = torch.where(scores >= 0, torch.ones_like(scores), torch.zeros_like(scores))
        else:
            bits = (scores > 0 if self.form == ">" else scores >= 0).float()
        context = torch.matmul(bits, v).permute(0, 2, 1, 3).contiguous()
        context = context.view(context.shape[0], context.shape[1], -1)
        return (context, raw, bits) if self.outputs == "all" else context


class BiBertLayer(nn.Module):
    """One encoder layer: Bi-Attention, binary output linear, residual + LayerNorm, binary FFN
    with GELU, residual + LayerNorm."""

    def __init__(self, hidden: int = 256, heads: int = 4, ffn: int = 1024):
        super().__init__()
        self.attention = BiAttention(hidden, heads)
        self.out = BinaryLinear(hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.up, self.down = BinaryLinear(hidden, ffn), BinaryLinear(ffn, hidden)
        self.norm2 = nn.LayerNorm(hidden)

    def forward(self, x):
        h = self.norm1(x + self.out(self.attention(x)))
        return self.norm2(h + self.down(nn.functional.gelu(self.up(h))))


def export(path, model: nn.Module, tokens: int, hidden: int, dynamo: bool = False, seed: int = 0,
           zero_bias: bool = False) -> str:
    """Seed, optionally zero every linear's bias and drop its weight scale (then a linear's output
    is an exact integer, often exactly 0 in ONNX Runtime too, and the ``Sign`` after it ternary;
    with a scale like mean |W| the float sums of ``±scale`` round, and a sum that is 0 in exact
    arithmetic can come out as a tiny non-zero: a near-tie of the float graph, not a test of the
    kernel), and export ``model`` for ``[1, tokens, hidden]`` inputs."""
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.reset_parameters()
            if zero_bias:
                nn.init.zeros_(module.bias)
                module.scaled = False
    names = ["context", "scores", "attention"] if getattr(model, "outputs", "") == "all" else ["output"]
    torch.onnx.export(model.eval(), (torch.randn(1, tokens, hidden),), str(path), dynamo=dynamo,
                      input_names=["x"], output_names=names)
    return str(path)
