"""Forward values, closed-form gradients, eval/export behaviour and registry of bnn_tvm.training.quantizers."""

import io
import math
import warnings

import pytest
import torch
from torch.testing import assert_close

from bnn_tvm.training import quantizers
from bnn_tvm.training.quantizers import (
    ApproxSign,
    DoReFa,
    EdeSign,
    LibraPBWeight,
    MagnitudeAwareSign,
    RPReLU,
    RSign,
    SteSign,
    SwishSign,
)

DTYPE = torch.float64  # closed-form comparisons in double precision
# Hand-picked points: exact zeros (both signs), the clip boundaries and both sides of them.
POINTS = torch.tensor(
    [-3.0, -1.5, -1.0, -0.999, -0.5, -1e-3, -0.0, 0.0, 1e-3, 0.25, 0.5, 0.999, 1.0, 1.001, 2.0, 3.0], dtype=DTYPE
)
CHANNELS = 3


def sample_points(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([POINTS, 1.5 * torch.randn(64, generator=generator, dtype=DTYPE)])


def random_like(x: torch.Tensor, seed: int = 1) -> torch.Tensor:
    return torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)


def input_grad(module: torch.nn.Module, x: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(module(x), x, upstream)
    return grad


def sign_reference(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def nchw_input(seed: int = 2) -> torch.Tensor:
    x = torch.randn(2, CHANNELS, 4, 5, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    x[0, :, 0, 0] = 0.0  # exact zeros must binarize to +1
    return x


# ---------------------------------------------------------------- activation sign quantizers

SIGN_FACTORIES = {
    "ste_sign": lambda: SteSign(),
    "approx_sign": lambda: ApproxSign(),
    "swish_sign": lambda: SwishSign(),
    "ede_sign": lambda: EdeSign(),
}


@pytest.mark.parametrize("name", SIGN_FACTORIES)
def test_sign_forward_is_plus_minus_one_with_zero_positive(name):
    x = sample_points()
    y = SIGN_FACTORIES[name]()(x)
    assert torch.equal(y, sign_reference(x))
    assert y[: len(POINTS)][POINTS == 0].tolist() == [1.0, 1.0]  # both 0.0 and -0.0
    assert y.dtype == x.dtype


@pytest.mark.parametrize("clip_value", [1.0, 0.5, 2.5])
def test_ste_sign_gradient_is_clipped_identity(clip_value):
    x = torch.cat([sample_points(), torch.tensor([clip_value, -clip_value], dtype=DTYPE)])
    upstream = random_like(x)
    expected = upstream * (x.abs() <= clip_value).to(DTYPE)
    assert_close(input_grad(SteSign(clip_value), x, upstream), expected, rtol=0, atol=0)
    # The boundary itself is inside the pass-through window.
    assert_close(input_grad(SteSign(clip_value), x, upstream)[-2:], upstream[-2:], rtol=0, atol=0)


def test_approx_sign_gradient_matches_formula():
    x = sample_points()
    upstream = random_like(x)
    expected = upstream * torch.where(x.abs() <= 1, 2 - 2 * x.abs(), torch.zeros_like(x))
    assert_close(input_grad(ApproxSign(), x, upstream), expected)


def test_approx_sign_gradient_is_derivative_of_its_polynomial():
    x = sample_points().requires_grad_(True)
    polynomial = torch.where(x.abs() <= 1, 2 * x - x * x.abs(), torch.sign(x))
    (derivative,) = torch.autograd.grad(polynomial.sum(), x)
    assert_close(input_grad(ApproxSign(), x.detach(), torch.ones_like(x)), derivative)


def swish_sign_grad_formula(x: torch.Tensor, beta: float) -> torch.Tensor:
    return beta * (2 - beta * x * torch.tanh(beta * x / 2)) / (1 + torch.cosh(beta * x))


@pytest.mark.parametrize("beta", [5.0, 2.0])
def test_swish_sign_gradient_matches_formula(beta):
    x = sample_points()
    upstream = random_like(x)
    assert_close(input_grad(SwishSign(beta), x, upstream), upstream * swish_sign_grad_formula(x, beta))
    assert_close(input_grad(SwishSign(beta), torch.zeros(1, dtype=DTYPE), torch.ones(1, dtype=DTYPE)),
                 torch.tensor([beta], dtype=DTYPE))  # peak value beta at 0


@pytest.mark.parametrize("beta", [5.0, 2.0])
def test_swish_sign_formula_is_derivative_of_swish_sign_function(beta):
    x = sample_points().requires_grad_(True)
    s = torch.sigmoid(beta * x)
    swish_sign = 2 * s * (1 + beta * x * (1 - s)) - 1
    (derivative,) = torch.autograd.grad(swish_sign.sum(), x)
    assert_close(swish_sign_grad_formula(x.detach(), beta), derivative)


def test_ede_schedule_endpoints_and_midpoint():
    ede = EdeSign()
    assert_close(ede.t, torch.tensor(0.1))  # a fresh module starts at epoch 0
    assert_close(ede.k, torch.tensor(10.0))
    ede.set_progress(0, 100)
    assert_close(ede.t, torch.tensor(0.1))
    assert_close(ede.k, torch.tensor(10.0))
    ede.set_progress(50, 100)
    assert_close(ede.t, torch.tensor(1.0))
    assert_close(ede.k, torch.tensor(1.0))
    ede.set_progress(100, 100)
    assert_close(ede.t, torch.tensor(10.0))
    assert_close(ede.k, torch.tensor(1.0))
    assert "t" in ede.state_dict() and "k" in ede.state_dict()


@pytest.mark.parametrize("epoch, total", [(-1, 10), (11, 10), (0, 0)])
def test_ede_rejects_bad_progress(epoch, total):
    with pytest.raises(ValueError):
        EdeSign().set_progress(epoch, total)


@pytest.mark.parametrize("epoch", [0, 3, 10])
def test_ede_gradient_matches_formula(epoch):
    ede = EdeSign()
    ede.set_progress(epoch, 10)
    t = 0.1 * 10 ** (epoch / 10 * math.log10(100))
    k = max(1 / t, 1.0)
    x = sample_points()
    upstream = random_like(x)
    expected = upstream * k * t * (1 - torch.tanh(t * x) ** 2)
    assert_close(input_grad(ede, x, upstream), expected, rtol=1e-6, atol=1e-6)  # t, k are float32 buffers
    # And the formula is the derivative of k * tanh(t x).
    xg = x.clone().requires_grad_(True)
    (derivative,) = torch.autograd.grad((k * torch.tanh(t * xg)).sum(), xg)
    assert_close(expected, upstream * derivative)


# ---------------------------------------------------------------- weight quantizers


def conv_weight(seed: int = 3) -> torch.Tensor:
    return 0.3 * torch.randn(4, CHANNELS, 3, 3, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def test_magnitude_aware_sign_forward():
    w = conv_weight()
    w[1, 0, 0, 0] = 0.0
    alpha = w.abs().reshape(4, -1).mean(1).view(4, 1, 1, 1)
    y = MagnitudeAwareSign()(w)
    assert torch.equal(y, alpha * sign_reference(w))
    assert y[1, 0, 0, 0] == alpha[1, 0, 0, 0] > 0


def test_magnitude_aware_sign_gradient_matches_formula():
    w = conv_weight() * 4  # spread across the |w| <= 1 clip boundary
    w[0, 0, 0, 0] = 1.0
    upstream = random_like(w)
    rows, n = w.reshape(4, -1), w[0].numel()
    alpha = rows.abs().mean(1).view(4, 1, 1, 1)
    # Straight-through term through sign, plus the exact derivative of alpha = mean|w|.
    through_sign = upstream * alpha * (w.abs() <= 1).to(DTYPE)
    through_alpha = torch.sign(w) / n * (upstream * sign_reference(w)).reshape(4, -1).sum(1).view(4, 1, 1, 1)
    assert_close(input_grad(MagnitudeAwareSign(), w, upstream), through_sign + through_alpha)


def libra_reference(w: torch.Tensor):
    rows = w.reshape(w.shape[0], -1)
    mean = rows.mean(1).view(-1, 1, 1, 1)
    std = rows.std(1).view(-1, 1, 1, 1)
    w_hat = (w - mean) / std
    scale = 2.0 ** torch.round(torch.log2(w_hat.reshape(w.shape[0], -1).abs().mean(1))).view(-1, 1, 1, 1)
    return w_hat, std, scale


def test_libra_pb_weight_forward():
    w = conv_weight() + torch.tensor([0.0, 1.0, -2.0, 0.5], dtype=DTYPE).view(4, 1, 1, 1)  # channel offsets
    w_hat, _, scale = libra_reference(w)
    y = LibraPBWeight()(w)
    assert torch.equal(y, scale * sign_reference(w_hat))
    # Scales are powers of two; a standardised channel has mean |w_hat| just below 1, so scale 1.
    assert_close(scale.flatten(), torch.ones(4, dtype=DTYPE))
    # Balanced: each channel is binarized around its own mean, not around 0.
    assert (y[2] > 0).any() and (y[1] < 0).any()


def test_libra_pb_weight_power_of_two_scale_for_skewed_channel():
    w = torch.tensor([[10.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=DTYPE)
    w_hat, _, scale = libra_reference(w.view(1, 8, 1, 1))
    y = LibraPBWeight()(w)
    assert scale.item() == 0.5  # mean|w_hat| = 0.6615 -> log2 = -0.596 -> 2^-1
    assert torch.equal(y, 0.5 * sign_reference(w_hat.view(1, 8)))


def test_libra_pb_weight_gradient_is_straight_through_standardisation():
    w = conv_weight()
    upstream = random_like(w)
    w_hat, std, scale = libra_reference(w)
    n = w[0].numel()
    g = (upstream * scale).reshape(4, -1)
    rows_hat = w_hat.reshape(4, -1)
    # Closed-form Jacobian-transpose of w_hat = (w - mean) / std (unbiased std) applied to g.
    expected = (g - g.mean(1, keepdim=True) - rows_hat * (g * rows_hat).sum(1, keepdim=True) / (n - 1))
    expected = expected.view_as(w) / std
    assert_close(input_grad(LibraPBWeight(), w, upstream), expected)


def test_libra_pb_weight_rejects_single_weight_channels():
    with pytest.raises(ValueError, match="at least 2"):
        LibraPBWeight()(torch.ones(4, 1))


# ---------------------------------------------------------------- ReActNet


def test_rsign_forward_uses_per_channel_threshold():
    rsign = RSign(CHANNELS)
    with torch.no_grad():
        rsign.beta.copy_(torch.tensor([0.5, -0.25, 0.0]))
    x = nchw_input()
    x[1, 0, 1, 1] = 0.5  # exactly at the threshold -> +1
    y = rsign(x)
    assert torch.equal(y, sign_reference(x - rsign.beta.detach().to(DTYPE).view(1, 3, 1, 1)))
    assert y[1, 0, 1, 1] == 1.0
    assert y.dtype == DTYPE
    # 2-D (N, C) inputs use the same channel dim.
    assert torch.equal(rsign(torch.tensor([[0.4, -0.25, -0.1]])), torch.tensor([[-1.0, 1.0, -1.0]]))


def test_rsign_gradients_to_input_and_threshold():
    rsign = RSign(CHANNELS).to(DTYPE)
    with torch.no_grad():
        rsign.beta.copy_(torch.tensor([0.5, -0.25, 0.0]))
    x = (nchw_input() * 1.5).requires_grad_(True)
    upstream = random_like(x)
    grad_x, grad_beta = torch.autograd.grad(rsign(x), (x, rsign.beta), upstream)
    shifted = x.detach() - rsign.beta.detach().view(1, 3, 1, 1)
    passed = upstream * (shifted.abs() <= 1).to(DTYPE)
    assert_close(grad_x, passed, rtol=0, atol=0)
    assert_close(grad_beta, -passed.sum(dim=(0, 2, 3)))


def test_rsign_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match="3 channels"):
        RSign(CHANNELS)(torch.zeros(2, 4, 5, 5))


def test_rprelu_forward_and_gradients():
    rprelu = RPReLU(CHANNELS).to(DTYPE)
    assert torch.equal(rprelu.beta.detach(), torch.full((3,), 0.25, dtype=DTYPE))
    with torch.no_grad():
        rprelu.gamma.copy_(torch.tensor([0.1, -0.2, 0.0]))
        rprelu.zeta.copy_(torch.tensor([0.0, 0.5, -1.0]))
        rprelu.beta.copy_(torch.tensor([0.25, 0.1, -0.5]))
    x = nchw_input().requires_grad_(True)
    view = lambda p: p.detach().view(1, 3, 1, 1)  # noqa: E731
    u = x.detach() - view(rprelu.gamma)
    assert (u == 0).any()  # channel 2 has gamma = 0 and the input has exact zeros
    positive = (u > 0).to(DTYPE)  # at u = 0 the gradient takes the slope-beta branch
    expected = torch.where(u > 0, u, view(rprelu.beta) * u) + view(rprelu.zeta)
    y = rprelu(x)
    assert_close(y, expected)

    upstream = random_like(x)
    grads = torch.autograd.grad(y, (x, rprelu.gamma, rprelu.zeta, rprelu.beta), upstream)
    slope = positive + (1 - positive) * view(rprelu.beta)
    assert_close(grads[0], upstream * slope)
    assert_close(grads[1], -(upstream * slope).sum(dim=(0, 2, 3)))
    assert_close(grads[2], upstream.sum(dim=(0, 2, 3)))
    assert_close(grads[3], (upstream * u * (1 - positive)).sum(dim=(0, 2, 3)))


# ---------------------------------------------------------------- DoReFa


@pytest.mark.parametrize("k_bit, levels", [(1, [0.0, 1.0]), (2, [0.0, 1 / 3, 2 / 3, 1.0])])
def test_dorefa_levels(k_bit, levels):
    y = DoReFa(k_bit)(torch.linspace(-1, 2, 3001, dtype=DTYPE))
    assert_close(torch.unique(y), torch.tensor(levels, dtype=DTYPE))


def test_dorefa_forward_values_k2():
    x = torch.tensor([-0.5, 0.0, 0.1, 0.2, 0.5, 0.6, 0.9, 1.0, 1.7], dtype=DTYPE)
    expected = torch.tensor([0, 0, 0, 1, 2, 2, 3, 3, 3], dtype=DTYPE) / 3  # 0.5 * 3 = 1.5 rounds to even
    assert_close(DoReFa(2)(x), expected, rtol=0, atol=0)
    assert len(torch.unique(DoReFa(3)(torch.linspace(0, 1, 1001)))) == 8
    # Ties round half to even, like ONNX Round, so exported models agree with training.
    assert DoReFa(1)(torch.tensor([0.5])).item() == 0.0


def test_dorefa_gradient_is_straight_through_inside_unit_interval():
    x = torch.cat([sample_points(), torch.tensor([0.0, 1.0], dtype=DTYPE)])
    upstream = random_like(x)
    expected = upstream * ((x >= 0) & (x <= 1)).to(DTYPE)
    assert_close(input_grad(DoReFa(2), x, upstream), expected, rtol=0, atol=0)
    assert input_grad(DoReFa(2), x, upstream)[-1] == upstream[-1]  # x = 1 is inside


@pytest.mark.parametrize("k_bit", [0, -1, 1.5, True])
def test_dorefa_rejects_bad_bit_width(k_bit):
    with pytest.raises(ValueError, match="k_bit"):
        DoReFa(k_bit)


# ---------------------------------------------------------------- eval mode and export contract

ALL_FACTORIES = {
    **SIGN_FACTORIES,
    "libra_pb_weight": lambda: LibraPBWeight(),
    "magnitude_aware_sign": lambda: MagnitudeAwareSign(),
    "rsign": lambda: _with_params(RSign(CHANNELS), beta=[0.3, -0.1, 0.0]),
    "rprelu": lambda: _with_params(RPReLU(CHANNELS), gamma=[0.1, 0.0, -0.2], zeta=[0.5, 0.0, 0.1]),
    "dorefa": lambda: DoReFa(2),
}


def _with_params(module: torch.nn.Module, **values) -> torch.nn.Module:
    with torch.no_grad():
        for name, value in values.items():
            getattr(module, name).copy_(torch.tensor(value))
    return module


def test_every_registered_quantizer_is_covered():
    assert set(ALL_FACTORIES) == set(quantizers.available())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ALL_FACTORIES)
def test_eval_mode_matches_train_mode(name, dtype):
    module = ALL_FACTORIES[name]().to(dtype)
    x = nchw_input().to(dtype)
    train_out = module.train()(x)
    eval_out = module.eval()(x)
    assert eval_out.dtype == train_out.dtype == dtype
    assert torch.equal(eval_out, train_out)


@pytest.mark.parametrize("name", ["ste_sign", "approx_sign", "swish_sign", "ede_sign", "rsign"])
def test_eval_mode_sign_exports_to_plain_onnx_ops(name):
    onnx = pytest.importorskip("onnx")
    module = ALL_FACTORIES[name]().eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(1, CHANNELS, 4, 4),), buffer, dynamo=False)
    ops = {node.op_type for node in onnx.load_from_string(buffer.getvalue()).graph.node}
    assert {"GreaterOrEqual", "Where"} <= ops
    assert ops <= {"GreaterOrEqual", "Where", "Constant", "Identity"}, ops


def _uses_custom_autograd_function(y: torch.Tensor) -> bool:
    pending, seen = [y.grad_fn], set()
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            return True
        pending.extend(next_node for next_node, _ in node.next_functions)
    return False


@pytest.mark.parametrize("name", ["libra_pb_weight", "magnitude_aware_sign"])
def test_weight_quantizers_use_estimator_only_in_train_mode(name):
    w = conv_weight().requires_grad_(True)
    module = ALL_FACTORIES[name]()
    assert _uses_custom_autograd_function(module.train()(w))
    assert not _uses_custom_autograd_function(module.eval()(w))


# ---------------------------------------------------------------- registry


def test_available_lists_all_quantizers():
    assert quantizers.available() == sorted(
        ["ste_sign", "approx_sign", "swish_sign", "ede_sign", "libra_pb_weight",
         "magnitude_aware_sign", "rsign", "rprelu", "dorefa"]
    )


@pytest.mark.parametrize("name", ALL_FACTORIES)
def test_classes_carry_name_and_documented_formulas(name):
    cls = quantizers.REGISTRY[name]
    assert cls.name == name
    for section in ("Forward", "Backward", "Paper"):
        assert section in cls.__doc__, f"{cls.__name__} docstring lacks {section}"


def test_each_quantizer_states_its_precision_role_formula_and_reference():
    """As Larq's quantizers do: what a layer, ``train`` and ``summary`` read from the registry."""
    assert quantizers.names("activation") == ["ste_sign", "approx_sign", "swish_sign", "ede_sign", "rsign", "dorefa"]
    assert quantizers.names("weight") == ["ste_sign", "approx_sign", "swish_sign", "ede_sign", "libra_pb_weight",
                                          "magnitude_aware_sign"]
    assert [n for n, cls in quantizers.REGISTRY.items() if cls.channel_scale] == ["libra_pb_weight",
                                                                                 "magnitude_aware_sign"]
    assert quantizers.REGISTRY["rprelu"].role is None  # an activation function registered beside them
    bits = {name: quantizers.precision(factory()) for name, factory in ALL_FACTORIES.items()}
    assert bits == {**dict.fromkeys(ALL_FACTORIES, 1), "rprelu": 32, "dorefa": 2}
    assert quantizers.precision(DoReFa(3)) == 3 and quantizers.precision(None) == 32
    assert SteSign.formula == "forward: y = +1 if x >= 0 else -1; backward: dL/dx = dL/dy * 1{|x| <= clip_value}"
    assert RSign.formula.endswith("dL/dbeta_c = -sum over all dims but 1 of (dL/dy * 1{|x - beta_c| <= clip_value})")
    assert MagnitudeAwareSign.reference == 'Rastegari et al., "XNOR-Net", ECCV 2016; Liu et al., "Bi-Real Net", ECCV 2018.'
    with pytest.raises(ValueError, match="role"):
        quantizers.names("both")


def test_register_takes_the_description_from_the_docstring(monkeypatch):
    monkeypatch.setattr(quantizers, "REGISTRY", dict(quantizers.REGISTRY))

    class Undocumented(quantizers.Quantizer):
        """Sign with no stated arithmetic."""

    with pytest.raises(ValueError, match="Undocumented: its docstring states no Forward:"):
        quantizers.register("undocumented")(Undocumented)

    class Ternary(SteSign):
        role = "input"

    with pytest.raises(ValueError, match="role 'input' is not one of"):
        quantizers.register("ternary")(Ternary)


def test_get_by_name_is_case_insensitive_and_passes_kwargs():
    q = quantizers.get("STE_Sign", clip_value=0.5)
    assert type(q) is SteSign and q.clip_value == 0.5
    assert type(quantizers.get("DoReFa", k_bit=3)) is DoReFa
    assert quantizers.get("rsign", num_channels=7).beta.shape == (7,)


def test_get_passes_instances_and_none_through():
    q = SwishSign(beta=3.0)
    assert quantizers.get(q) is q
    assert quantizers.get(None) is None
    with pytest.raises(TypeError):
        quantizers.get(q, beta=2.0)
    with pytest.raises(TypeError):
        quantizers.get(42)


def test_get_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        quantizers.get("ste_sing")
    message = str(info.value)
    assert "'ste_sing'" in message
    assert all(name in message for name in quantizers.available())


def test_register_adds_new_name_and_rejects_duplicates(monkeypatch):
    monkeypatch.setattr(quantizers, "REGISTRY", dict(quantizers.REGISTRY))

    @quantizers.register("My_Sign")
    class MySign(SteSign):
        pass

    assert MySign.name == "my_sign" and type(quantizers.get("my_sign")) is MySign
    with pytest.raises(ValueError, match="already registered"):
        quantizers.register("STE_SIGN")(MySign)


def test_extra_repr_shows_parameters():
    assert "clip_value=0.5" in repr(SteSign(0.5))
    assert "beta=2.0" in repr(SwishSign(2.0))
    assert "k_bit=3" in repr(DoReFa(3))
    assert "num_channels=3" in repr(RSign(3)) and "num_channels=3" in repr(RPReLU(3))
    assert "t=0.1" in repr(EdeSign()) and "k=10" in repr(EdeSign())
    assert "clip_value=1.0" in repr(MagnitudeAwareSign())
