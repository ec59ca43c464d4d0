"""BiBERT-style binarized attention and encoder layer (Qin et al., ICLR 2022), written as its
public PyTorch code writes them: binary linears (``sign`` of the input, ``sign(W)`` times the
mean ``|W|`` per output), ``sign`` on the Q, K and V heads, ``Sign(Q) @ Sign(K)^T / sqrt(d)``
(plus a mask), Bi-Attention's ``bool`` (``scores >= 0`` as 0/1 floats; ``form=">"``: ``scores >
0``, ``form="where"``: ``torch.where(scores >= 0, 1., 0.)``) in place of softmax, then ``P @
Sign(V)``. Random (seeded) weights. The model is the zoo's (``bnn_tvm.training.published_models``,
zoo name ``bibert_layer``).

``export(path, ...)`` writes the ONNX file with either of PyTorch's exporters.
"""

from __future__ import annotations

import torch
from torch import nn

from bnn_tvm.training.published_models import BiAttention, BiBertLayer, BinaryLinear  # noqa: F401  (the zoo's)


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
