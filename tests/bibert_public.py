"""BiBERT's encoder layer as its public code writes it (htqin/BiBERT): ``transformer/utils_quant.py``
(``QuantizeLinear`` at 1-bit weights and activations: the weight ``mean|W| * sign(W - mean W)``
behind a ``clamp`` straight-through estimator, the input ``sign(x)`` behind one too, the bias added
in place; ``BinaryQuantizer``, ``ZMeanBinaryQuantizer``) and ``transformer/modeling_quant.py``
(``BertSelfAttention``, ``BertSelfOutput``, ``BertIntermediate`` with its erf ``gelu``,
``BertOutput``). Not the repository's files (``tools/published_architectures.py`` runs those):
the same operations, in the same order, as a small test model. Input ``[B, T, hidden]``; the
mask BertModel builds from an all-valid attention mask (zeros) is a constant.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class BinaryQuantizer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class ZMeanBinaryQuantizer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        out = torch.sign(x)
        out[out == -1] = 0
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad


class QuantizeLinear(nn.Linear):
    """``QuantizeLinear.forward`` at ``weight_bits = input_bits = 1``."""

    def forward(self, x):
        scaling_factor = torch.mean(abs(self.weight), dim=1, keepdim=True).detach()
        real_weights = self.weight - torch.mean(self.weight, dim=-1, keepdim=True)
        binary_weights_no_grad = scaling_factor * torch.sign(real_weights)
        cliped_weights = torch.clamp(real_weights, -1.0, 1.0)
        weight = binary_weights_no_grad.detach() - cliped_weights.detach() + cliped_weights
        binary_input_no_grad = torch.sign(x)
        cliped_input = torch.clamp(x, -1.0, 1.0)
        ba = binary_input_no_grad.detach() - cliped_input.detach() + cliped_input
        out = nn.functional.linear(ba, weight)
        out += self.bias.view(1, -1).expand_as(out)
        return out


def gelu(x):
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


class PublicBertLayer(nn.Module):
    """``BertLayer.forward(hidden_states, mask)[0]`` at 1-bit activations."""

    def __init__(self, hidden: int = 64, heads: int = 2, ffn: int = 128, tokens: int = 32):
        super().__init__()
        self.heads, self.depth = heads, hidden // heads
        self.query, self.key, self.value, self.dense = (QuantizeLinear(hidden, hidden) for _ in range(4))
        self.norm1, self.norm2 = nn.LayerNorm(hidden, eps=1e-12), nn.LayerNorm(hidden, eps=1e-12)
        self.intermediate, self.output = QuantizeLinear(hidden, ffn), QuantizeLinear(ffn, hidden)
        self.register_buffer("mask", torch.zeros(1, 1, 1, tokens))
        with torch.no_grad():  # random biases, as training leaves them
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    module.bias.normal_(0, 0.1)

    def transpose_for_scores(self, x):
        return x.view(x.size()[:-1] + (self.heads, self.depth)).permute(0, 2, 1, 3)

    def forward(self, hidden_states):
        query = BinaryQuantizer.apply(self.transpose_for_scores(self.query(hidden_states)))
        key = BinaryQuantizer.apply(self.transpose_for_scores(self.key(hidden_states)))
        value = self.transpose_for_scores(self.value(hidden_states))
        scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.depth) + self.mask
        probs = ZMeanBinaryQuantizer.apply(scores)
        context = torch.matmul(probs, BinaryQuantizer.apply(value)).permute(0, 2, 1, 3).contiguous()
        context = context.view(context.size()[:-2] + (self.heads * self.depth,))
        attention = self.norm1(self.dense(context) + hidden_states)
        return self.norm2(self.output(gelu(self.intermediate(attention))) + attention)


def export(path, tokens: int = 32, hidden: int = 64, dynamo: bool = False, seed: int = 0) -> str:
    torch.manual_seed(seed)
    model = PublicBertLayer(hidden, tokens=tokens).eval()
    torch.onnx.export(model, (torch.randn(1, tokens, hidden),), str(path), dynamo=dynamo, input_names=["x"],
                      output_names=["output"])
    return str(path)
