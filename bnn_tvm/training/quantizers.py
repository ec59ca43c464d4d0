"""Larq-style quantizers for binarized PyTorch networks.

Every quantizer is a small ``torch.nn.Module`` registered under a lower-case name::

    q = quantizers.get("ste_sign", clip_value=1.0)
    y = q(x)

Each quantizer states what it is, as Larq's quantizers do: ``precision`` (bits of the values it
produces), ``role`` (which operand of a binary layer it may quantize: ``"activation"``,
``"weight"`` or ``"both"``), ``channel_scale`` (a weight quantizer whose output is
``alpha_c * (+-1)`` per output channel), and, taken from its docstring when it is registered,
``formula`` (the forward computation and the gradient estimator) and ``reference`` (the paper). ``names(role)`` lists the
quantizers of a role, ``precision(q)`` the bits of a layer's quantizer.

Conventions shared by the whole module:

* ``sign(0) = +1`` everywhere, so that the binarized value is always in {-1, +1}.
* In training mode the forward value is exact and the backward pass uses the estimator
  documented on each class (implemented with ``torch.autograd.Function``, not detach tricks,
  so forward values are bit-identical to eval mode).
* In eval mode sign-type quantizers compute ``torch.where(x >= 0, 1.0, -1.0)`` with plain tensor
  ops only, so ONNX export yields GreaterOrEqual + Where nodes, which the compiler pattern-matches.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "REGISTRY",
    "ROLES",
    "Quantizer",
    "register",
    "get",
    "available",
    "names",
    "precision",
    "hard_sign",
    "SteSign",
    "ApproxSign",
    "SwishSign",
    "EdeSign",
    "LibraPBWeight",
    "MagnitudeAwareSign",
    "RSign",
    "RPReLU",
    "DoReFa",
]

ROLES = ("activation", "weight", "both")
FLOAT_BITS = 32  # the precision of a layer operand no quantizer touches


class Quantizer(nn.Module):
    """A registered quantizer's description (class attributes; ``formula`` and ``reference`` are
    set by ``register`` from the class docstring's ``Forward:`` and ``Backward:``, and its
    ``Paper:`` or ``Papers:``)."""

    name: str
    formula: str
    reference: str
    precision: int = 1  # bits of the values it produces
    role: str | None = "both"  # one of ROLES; None: registered beside the quantizers, not one (RPReLU)
    channel_scale: bool = False  # a weight quantizer whose output is alpha_c * (+-1) per output channel


REGISTRY: dict[str, type[Quantizer]] = {}


def register(name: str) -> Callable[[type[Quantizer]], type[Quantizer]]:
    """Class decorator: registers the class under ``name`` (lower-cased) and sets ``cls.name``,
    ``cls.formula`` and ``cls.reference`` (from its docstring, which must state them)."""
    key = name.lower()

    def decorator(cls: type[Quantizer]) -> type[Quantizer]:
        if key in REGISTRY:
            raise ValueError(f"Quantizer name {key!r} is already registered to {REGISTRY[key].__name__}")
        if cls.role is not None and cls.role not in ROLES:
            raise ValueError(f"Quantizer {key!r}: role {cls.role!r} is not one of {', '.join(ROLES)}")
        cls.name = key
        cls.formula = (f"forward: {_docstring_section(cls, ('Forward:',))}; "
                       f"backward: {_docstring_section(cls, ('Backward:',))}")
        cls.reference = _docstring_section(cls, ("Paper:", "Papers:"))
        REGISTRY[key] = cls
        return cls

    return decorator


def _docstring_section(cls: type, headings: tuple[str, ...]) -> str:
    """The text after the first of ``headings`` in ``cls``'s docstring with its continuation lines
    (those indented deeper than the heading), on one line."""
    lines = (inspect.getdoc(cls) or "").splitlines()
    for start, line in enumerate(lines):
        stripped = line.lstrip()
        heading = next((h for h in headings if stripped.startswith(h)), None)
        if heading is None:
            continue
        indent = len(line) - len(stripped)
        parts = [stripped[len(heading):]]
        for following in lines[start + 1:]:
            if not following.strip() or len(following) - len(following.lstrip()) <= indent:
                break
            parts.append(following)
        return " ".join(" ".join(parts).split())
    raise ValueError(f"{cls.__name__}: its docstring states no {' or '.join(headings)} section")


def available() -> list[str]:
    """Sorted names of all registered quantizers."""
    return sorted(REGISTRY)


def names(role: str) -> list[str]:
    """The registered quantizers that may quantize a layer's ``role`` operand ("activation" or
    "weight": those of that role and those of both), in registration order."""
    if role not in ROLES[:2]:
        raise ValueError(f"role must be 'activation' or 'weight', got {role!r}")
    return [name for name, cls in REGISTRY.items() if cls.role in (role, "both")]


def precision(quantizer: nn.Module | None) -> int:
    """Bits of the values ``quantizer`` produces: its ``precision``; 32 with none (the operand
    stays float); 1 for a module that states none (a sign of the user's own)."""
    if quantizer is None:
        return FLOAT_BITS
    return getattr(quantizer, "precision", 1)


def get(name_or_obj: str | nn.Module | None, **kwargs) -> nn.Module | None:
    """Resolves a quantizer.

    A string is looked up case-insensitively and the class is constructed with ``kwargs``;
    a module instance is returned unchanged; ``None`` (meaning "no quantizer", as in Larq)
    is returned unchanged.
    """
    if name_or_obj is None or isinstance(name_or_obj, nn.Module):
        if kwargs:
            raise TypeError("Constructor arguments can only be given together with a quantizer name")
        return name_or_obj
    if not isinstance(name_or_obj, str):
        raise TypeError(f"Expected a quantizer name or nn.Module, got {type(name_or_obj).__name__}")
    cls = REGISTRY.get(name_or_obj.lower())
    if cls is None:
        raise ValueError(f"Unknown quantizer {name_or_obj!r}; available: {', '.join(available())}")
    return cls(**kwargs)


def hard_sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where x >= 0, else -1, in x's dtype. Plain ops only: this is what ONNX export sees."""
    return _in_dtype_of(torch.where(x >= 0, 1.0, -1.0), x)


def _in_dtype_of(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # torch.where with Python scalars yields the default dtype; cast only when it differs so
    # a float32 export carries no Cast node (the TorchScript exporter records even no-op casts).
    return y if y.dtype == x.dtype else y.to(x.dtype)


class _SignWithSurrogateGrad(torch.autograd.Function):
    """Forward: hard_sign(x). Backward: grad * surrogate_grad (precomputed, same shape as x)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, surrogate_grad: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(surrogate_grad)
        return hard_sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (surrogate_grad,) = ctx.saved_tensors
        return grad * surrogate_grad, None


def _sign_with_surrogate_grad(x: torch.Tensor, surrogate_grad: torch.Tensor) -> torch.Tensor:
    return _SignWithSurrogateGrad.apply(x, surrogate_grad)


def _clip_mask(x: torch.Tensor, clip_value: float) -> torch.Tensor:
    """1{|x| <= clip_value} in x's dtype (the clipped straight-through estimator)."""
    return (x.abs() <= clip_value).to(x.dtype)


def _check_positive(name: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return float(value)


class _SignQuantizer(Quantizer):
    """Base for the sign quantizers of activations and weights: exact sign forward,
    ``surrogate_grad`` backward."""

    def surrogate_grad(self, x: torch.Tensor) -> torch.Tensor:
        """d(sign)/dx used by the backward pass, evaluated at x."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return hard_sign(x)
        # Detached: the surrogate is a constant of the backward pass, not part of the graph.
        return _sign_with_surrogate_grad(x, self.surrogate_grad(x.detach()))


@register("ste_sign")
class SteSign(_SignQuantizer):
    """Sign with the clipped straight-through estimator.

    Forward:  y = +1 if x >= 0 else -1
    Backward: dL/dx = dL/dy * 1{|x| <= clip_value}

    Paper: Courbariaux, Hubara et al., "Binarized Neural Networks", 2016.
    """

    def __init__(self, clip_value: float = 1.0):
        super().__init__()
        self.clip_value = _check_positive("clip_value", clip_value)

    def surrogate_grad(self, x: torch.Tensor) -> torch.Tensor:
        return _clip_mask(x, self.clip_value)

    def extra_repr(self) -> str:
        return f"clip_value={self.clip_value}"


@register("approx_sign")
class ApproxSign(_SignQuantizer):
    """Sign with the piecewise-polynomial ApproxSign gradient.

    Forward:  y = +1 if x >= 0 else -1
    Backward: dL/dx = dL/dy * (2 - 2|x|) if |x| <= 1 else 0
              (derivative of 2x - x|x| on [-1, 1], sign(x) outside)

    Paper: Liu et al., "Bi-Real Net", ECCV 2018.
    """

    def surrogate_grad(self, x: torch.Tensor) -> torch.Tensor:
        return (2 - 2 * x.abs()).clamp_min(0)

    def extra_repr(self) -> str:
        return ""


@register("swish_sign")
class SwishSign(_SignQuantizer):
    """Sign with the SwishSign gradient.

    Forward:  y = +1 if x >= 0 else -1
    Backward: dL/dx = dL/dy * beta * (2 - beta*x*tanh(beta*x/2)) / (1 + cosh(beta*x))
              (derivative of 2*sigmoid(beta*x) * (1 + beta*x*(1 - sigmoid(beta*x))) - 1)

    Paper: Darabi et al., "BNN+: Improved Binary Network Training", 2018.
    """

    def __init__(self, beta: float = 5.0):
        super().__init__()
        self.beta = _check_positive("beta", beta)

    def surrogate_grad(self, x: torch.Tensor) -> torch.Tensor:
        bx = self.beta * x
        return self.beta * (2 - bx * torch.tanh(bx / 2)) / (1 + torch.cosh(bx))

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


@register("ede_sign")
class EdeSign(_SignQuantizer):
    """Sign with IR-Net's Error Decay Estimator (a tanh surrogate that sharpens during training).

    Forward:  y = +1 if x >= 0 else -1
    Backward: dL/dx = dL/dy * k * t * (1 - tanh(t*x)^2)
              t = t_min * 10^(epoch/total_epochs * log10(t_max/t_min)),  k = max(1/t, 1)

    ``t`` and ``k`` are buffers (saved in the state dict); call ``set_progress`` once per epoch.
    A fresh module is at epoch 0: t = t_min, k = max(1/t_min, 1).

    Paper: Qin et al., "Forward and Backward Information Retention for Accurate Binary Neural
    Networks" (IR-Net), CVPR 2020.
    """

    def __init__(self, t_min: float = 0.1, t_max: float = 10.0):
        super().__init__()
        self.t_min = _check_positive("t_min", t_min)
        self.t_max = _check_positive("t_max", t_max)
        self.register_buffer("t", torch.tensor(self.t_min))
        self.register_buffer("k", torch.tensor(max(1 / self.t_min, 1.0)))

    def set_progress(self, epoch: int, total_epochs: int) -> None:
        """Moves t (and k) along the schedule to ``epoch`` of ``total_epochs``."""
        if total_epochs <= 0:
            raise ValueError(f"total_epochs must be > 0, got {total_epochs}")
        if not 0 <= epoch <= total_epochs:
            raise ValueError(f"epoch must be in [0, {total_epochs}], got {epoch}")
        t = self.t_min * 10 ** (epoch / total_epochs * math.log10(self.t_max / self.t_min))
        self.t.fill_(t)
        self.k.fill_(max(1 / t, 1.0))

    def surrogate_grad(self, x: torch.Tensor) -> torch.Tensor:
        t, k = self.t.to(x.dtype), self.k.to(x.dtype)
        return k * t * (1 - torch.tanh(t * x) ** 2)

    def extra_repr(self) -> str:
        return f"t_min={self.t_min}, t_max={self.t_max}, t={self.t.item():.4g}, k={self.k.item():.4g}"


def _per_channel_rows(w: torch.Tensor) -> torch.Tensor:
    """Weight as (out_channels, fan_in): one row per output channel (dim 0)."""
    return w.reshape(w.shape[0], -1)


def _as_channel_column(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-output-channel vector reshaped to broadcast against weight ``like`` along dim 0."""
    return v.view(-1, *([1] * (like.dim() - 1)))


@register("libra_pb_weight")
class LibraPBWeight(Quantizer):
    """IR-Net Libra-PB weight binarization (balanced, standardised weights with a power-of-2 scale).

    Per output channel c (dim 0), with mean/std over all other dims (std is unbiased, as
    ``torch.std`` in the IR-Net reference code):
        w_hat = (w - mean_c) / std_c
        s_c   = 2 ^ round(log2(mean(|w_hat_c|)))
    Forward:  y = s_c * sign(w_hat), sign(0) = +1
    Backward: s_c is treated as a constant (detached, as in IR-Net); sign is the identity
              (unclipped straight-through). The gradient therefore flows exactly through the
              standardisation: dL/dw = J^T (s_c * dL/dy) with J = d(w_hat)/dw, i.e. per channel
              dL/dw = (g - mean(g) - w_hat * sum(g * w_hat) / (n - 1)) / std_c,  g = s_c * dL/dy,
              n = fan-in. (IR-Net itself uses EDE for this sign; here it is plain STE.)
    A constant channel (std = 0) gives w_hat = 0 and s_c = 0, so that channel binarizes to 0.

    Paper: Qin et al., "Forward and Backward Information Retention for Accurate Binary Neural
    Networks" (IR-Net), CVPR 2020.
    """

    role = "weight"
    channel_scale = True

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        rows = _per_channel_rows(w)
        if rows.shape[1] < 2:
            raise ValueError(f"libra_pb_weight needs at least 2 weights per output channel, got shape {tuple(w.shape)}")
        mean = _as_channel_column(rows.mean(dim=1), w)
        # Clamp only guards exact zero (constant channel); any real std passes through unchanged.
        std = _as_channel_column(rows.std(dim=1).clamp_min(torch.finfo(w.dtype).tiny), w)
        w_hat = (w - mean) / std
        scale = torch.exp2(torch.round(torch.log2(_per_channel_rows(w_hat).abs().mean(dim=1))))
        scale = _as_channel_column(scale, w).detach()
        if not self.training:
            return scale * hard_sign(w_hat)
        return scale * _sign_with_surrogate_grad(w_hat, torch.ones_like(w_hat))

    def extra_repr(self) -> str:
        return ""


@register("magnitude_aware_sign")
class MagnitudeAwareSign(Quantizer):
    """Weight sign scaled by the per-output-channel mean magnitude.

    Per output channel c (dim 0), n = fan-in:
        alpha_c = mean(|w_c|)
    Forward:  y = alpha_c * sign(w), sign(0) = +1
    Backward: alpha is differentiable and sign uses the clipped STE, so exactly
              dL/dw_j = alpha_c * 1{|w_j| <= clip_value} * dL/dy_j
                        + sgn(w_j) / n * sum_{i in c} dL/dy_i * sign(w_i)
              with sgn(0) = 0 (autograd's derivative of |w|). The first term is Bi-Real Net's
              magnitude-aware gradient; Bi-Real Net and Larq drop the second term (they
              detach alpha), this module keeps it.

    Papers: Rastegari et al., "XNOR-Net", ECCV 2016; Liu et al., "Bi-Real Net", ECCV 2018.
    """

    role = "weight"
    channel_scale = True

    def __init__(self, clip_value: float = 1.0):
        super().__init__()
        self.clip_value = _check_positive("clip_value", clip_value)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        alpha = _as_channel_column(_per_channel_rows(w).abs().mean(dim=1), w)
        if not self.training:
            return alpha * hard_sign(w)
        return alpha * _sign_with_surrogate_grad(w, _clip_mask(w.detach(), self.clip_value))

    def extra_repr(self) -> str:
        return f"clip_value={self.clip_value}"


def _channel_param_view(param: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-channel parameter [C] reshaped to broadcast along dim 1 of x (N, C, ...)."""
    if x.dim() < 2 or x.shape[1] != param.numel():
        raise ValueError(f"Expected input with {param.numel()} channels in dim 1, got shape {tuple(x.shape)}")
    return param.view(1, -1, *([1] * (x.dim() - 2)))


@register("rsign")
class RSign(Quantizer):
    """ReActNet RSign: sign with a learnable per-channel threshold beta (channel dim 1).

    Forward:  y = +1 if x >= beta_c else -1   (i.e. sign(x - beta_c), sign(0) = +1)
    Backward: clipped STE applied to the shifted input u = x - beta_c:
              dL/dx = dL/dy * 1{|x - beta_c| <= clip_value}
              dL/dbeta_c = -sum over all dims but 1 of (dL/dy * 1{|x - beta_c| <= clip_value})
    beta is initialised to 0.

    Paper: Liu et al., "ReActNet", ECCV 2020.
    """

    role = "activation"

    def __init__(self, num_channels: int, clip_value: float = 1.0):
        super().__init__()
        self.num_channels = num_channels
        self.clip_value = _check_positive("clip_value", clip_value)
        self.beta = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = _channel_param_view(self.beta, x)
        if not self.training:
            # Comparing against beta directly exports as a single GreaterOrEqual with a constant.
            return _in_dtype_of(torch.where(x >= beta, 1.0, -1.0), x)
        shifted = x - beta  # same type promotion as the eval comparison, so values agree
        return _in_dtype_of(_sign_with_surrogate_grad(shifted, _clip_mask(shifted.detach(), self.clip_value)), x)

    def extra_repr(self) -> str:
        return f"num_channels={self.num_channels}, clip_value={self.clip_value}"


@register("rprelu")
class RPReLU(Quantizer):
    """ReActNet RPReLU activation (not a quantizer, registered for convenience).

    Forward:  y = PReLU_beta(x - gamma_c) + zeta_c, i.e. with u = x - gamma_c (channel dim 1)
              y = u + zeta_c if u > 0 else beta_c * u + zeta_c
    Backward: exact autograd gradient of the above; at u = 0 it takes the beta_c branch
              (torch.nn.functional.prelu's convention, matching the formula as written).
    Parameters are float32 like torch.nn.PReLU; call ``.to(dtype)`` for other input dtypes.
    Initialisation: gamma = 0, zeta = 0, beta = ``init_slope`` (0.25, as torch.nn.PReLU).

    Paper: Liu et al., "ReActNet", ECCV 2020.
    """

    role = None
    precision = FLOAT_BITS

    def __init__(self, num_channels: int, init_slope: float = 0.25):
        super().__init__()
        self.num_channels = num_channels
        self.gamma = nn.Parameter(torch.zeros(num_channels))
        self.zeta = nn.Parameter(torch.zeros(num_channels))
        self.beta = nn.Parameter(torch.full((num_channels,), float(init_slope)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gamma = _channel_param_view(self.gamma, x)
        zeta = _channel_param_view(self.zeta, x)
        return F.prelu(x - gamma, self.beta) + zeta

    def extra_repr(self) -> str:
        return f"num_channels={self.num_channels}"


class _RoundWithClippedSTE(torch.autograd.Function):
    """Forward: round(clip(x, 0, 1) * levels) / levels. Backward: grad * 1{0 <= x <= 1}."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, levels: int) -> torch.Tensor:
        ctx.save_for_backward(x)
        return _dorefa_levels(x, levels)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        return grad * ((x >= 0) & (x <= 1)).to(grad.dtype), None


def _dorefa_levels(x: torch.Tensor, levels: int) -> torch.Tensor:
    return torch.round(x.clamp(0, 1) * levels) / levels


@register("dorefa")
class DoReFa(Quantizer):
    """DoReFa k-bit activation quantizer.

    Forward:  y = round(clip(x, 0, 1) * (2^k - 1)) / (2^k - 1)   (round half to even, as ONNX Round)
    Backward: dL/dx = dL/dy * 1{0 <= x <= 1}

    Paper: Zhou et al., "DoReFa-Net", 2016.
    """

    role = "activation"

    def __init__(self, k_bit: int = 2):
        super().__init__()
        if isinstance(k_bit, bool) or not isinstance(k_bit, int) or k_bit < 1:
            raise ValueError(f"k_bit must be an integer >= 1, got {k_bit!r}")
        self.k_bit = k_bit

    @property
    def precision(self) -> int:
        """k bits (2^k levels from 0 to 1)."""
        return self.k_bit

    @property
    def levels(self) -> int:
        """Number of steps between 0 and 1 (2^k - 1)."""
        return 2**self.k_bit - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return _dorefa_levels(x, self.levels)
        return _RoundWithClippedSTE.apply(x, self.levels)

    def extra_repr(self) -> str:
        return f"k_bit={self.k_bit}"
