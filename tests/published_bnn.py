"""Binarized layers written the way published PyTorch BNN code writes them, and a CIFAR ResNet
built from them: what users bring to the compiler.

The layers follow the public code of their papers in form (not copied): straight-through
estimators left in the forward pass with ``.detach()``, Bi-Real's mask polynomial, autograd
``Function``s whose forward is ``sign``, ReActNet's learnable bias before the sign, weight scales
computed from the latent weights in the forward pass, IR-Net's standardised weights with a
power-of-two scale. ``resnet(form, blocks)`` builds a CIFAR ResNet (3 stages, 16/32/64
channels; ``blocks=3`` is ResNet-20) whose binary convs all use one form.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class BiRealActivation(nn.Module):
    """Bi-Real Net / ReActNet: sign forward, a piecewise polynomial's gradient backward."""

    def forward(self, x):
        out_forward = torch.sign(x)
        mask1 = x < -1
        mask2 = x < 0
        mask3 = x < 1
        out1 = (-1) * mask1.type(torch.float32) + (x * x + 2 * x) * (1 - mask1.type(torch.float32))
        out2 = out1 * mask2.type(torch.float32) + (-x * x + 2 * x) * (1 - mask2.type(torch.float32))
        out3 = out2 * mask3.type(torch.float32) + 1 * (1 - mask3.type(torch.float32))
        return out_forward.detach() - out3.detach() + out3


class LearnableBias(nn.Module):
    """ReActNet's RSign shift before the sign."""

    def __init__(self, channels):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x):
        return x + self.bias.expand_as(x)


class HardtanhSTE(nn.Module):
    """BNN/DoReFa/XNOR++ style: clip, then sign with the clipped value's gradient."""

    def forward(self, x):
        x = torch.clamp(x, -1, 1)
        return x + (torch.sign(x) - x).detach()


class SignFunction(torch.autograd.Function):
    """BinaryNet / IR-Net style autograd function: sign forward, a clipped identity backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.sign()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).float()


class SignActivation(nn.Module):
    def forward(self, x):
        return SignFunction.apply(x)


class HardBinaryConv(nn.Module):
    """Bi-Real / ReActNet weights: ``mean|W|`` per output channel times sign, with a weight
    straight-through estimator through ``clamp(W)``."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.stride = stride
        self.weight = nn.Parameter(torch.rand(cout, cin, 3, 3) * 0.001)

    def forward(self, x):
        real_weights = self.weight
        scaling_factor = torch.mean(torch.mean(torch.mean(abs(real_weights), dim=3, keepdim=True), dim=2, keepdim=True),
                                    dim=1, keepdim=True).detach()
        binary_weights_no_grad = scaling_factor * torch.sign(real_weights)
        cliped_weights = torch.clamp(real_weights, -1.0, 1.0)
        binary_weights = binary_weights_no_grad.detach() - cliped_weights.detach() + cliped_weights
        return F.conv2d(x, binary_weights, stride=self.stride, padding=1)


class XnorConv(nn.Conv2d):
    """XNOR-Net weights: ``alpha * sign(W - mean)`` with ``alpha = mean|W - mean|`` per output channel."""

    def __init__(self, cin, cout, stride=1):
        super().__init__(cin, cout, 3, stride, 1, bias=False)

    def forward(self, x):
        centred = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        alpha = centred.abs().mean(dim=(1, 2, 3), keepdim=True)
        return F.conv2d(x, alpha * torch.sign(centred), stride=self.stride, padding=1)


class IrConv(nn.Conv2d):
    """IR-Net weights: standardised, sign, times a power-of-two scale per output channel."""

    def __init__(self, cin, cout, stride=1):
        super().__init__(cin, cout, 3, stride, 1, bias=False)

    def forward(self, x):
        w = self.weight
        bw = w - w.view(w.size(0), -1).mean(-1).view(w.size(0), 1, 1, 1)
        bw = bw / bw.view(bw.size(0), -1).std(-1).view(bw.size(0), 1, 1, 1)
        sw = torch.pow(torch.tensor([2.0] * bw.size(0)),
                       (torch.log(bw.abs().view(bw.size(0), -1).mean(-1)) / torch.log(torch.tensor(2.0))).round()
                       ).view(bw.size(0), 1, 1, 1).detach()
        return F.conv2d(x, SignFunction.apply(bw) * sw, stride=self.stride, padding=1)


class SignConv(nn.Conv2d):
    """BinaryNet.pytorch: the conv reads ``sign(W)``."""

    def __init__(self, cin, cout, stride=1):
        super().__init__(cin, cout, 3, stride, 1, bias=False)

    def forward(self, x):
        return F.conv2d(x, torch.sign(self.weight), stride=self.stride, padding=1)


class TwnConv(nn.Conv2d):
    """Ternary Weight Networks (Li et al.): ``delta = 0.7 * mean|W|`` per output channel, weights
    with ``|W| > delta`` become ``alpha * sign(W)`` with ``alpha`` their mean magnitude, the rest 0."""

    def __init__(self, cin, cout, stride=1):
        super().__init__(cin, cout, 3, stride, 1, bias=False)

    def forward(self, x):
        w = self.weight
        delta = 0.7 * w.abs().mean(dim=(1, 2, 3), keepdim=True)
        mask = (w.abs() > delta).float()
        alpha = (w.abs() * mask).sum(dim=(1, 2, 3), keepdim=True) / mask.sum(dim=(1, 2, 3), keepdim=True)
        return F.conv2d(x, alpha * torch.sign(w) * mask, stride=self.stride, padding=1)


class TtqConv(nn.Conv2d):
    """Trained Ternary Quantization (Zhu et al.): per layer learned positive and negative scales
    ``Wp``, ``Wn``; weights above ``delta = t * max|W|`` become ``Wp``, below ``-delta`` become
    ``-Wn``, the rest 0 (computed in the forward pass, as the paper's code does)."""

    def __init__(self, cin, cout, stride=1, t=0.05):
        super().__init__(cin, cout, 3, stride, 1, bias=False)
        self.Wp = nn.Parameter(torch.tensor(1.0))
        self.Wn = nn.Parameter(torch.tensor(1.0))
        self.t = t

    def forward(self, x):
        w = self.weight
        delta = self.t * w.abs().max()
        pos = (w > delta).float()
        neg = (w < -delta).float()
        return F.conv2d(x, self.Wp * pos - self.Wn * neg, stride=self.stride, padding=1)


class XnorPlusPlusConv(nn.Module):
    """XNOR++ (Bulat and Tzimiropoulos) as BiBench writes it (``bibench/models/layers/xnorplusplus.py``):
    the conv binarizes its own input and weights (``torch.sign`` with a straight-through
    estimator through ``clamp``, so the input's zeros stay 0) and multiplies its output by learned
    scales over the output channels, rows and columns, ``y * o_scale * h_scale * w_scale``, the
    row and column scales sliced from ``[1, 1, 2000, 1]`` and ``[1, 1, 1, 2000]`` parameters to
    the output's size."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.stride, self.shape = stride, (cout, cin, 3, 3)
        self.weight = nn.Parameter(torch.rand(*self.shape) * 0.001)
        self.o_scale = nn.Parameter(torch.ones(1, cout, 1, 1))
        self.h_scale = nn.Parameter(torch.ones(1, 1, 2000, 1))
        self.w_scale = nn.Parameter(torch.ones(1, 1, 1, 2000))

    def forward(self, x):
        binary_input_no_grad = torch.sign(x)
        cliped_input = torch.clamp(x, -1.0, 1.0)
        x = binary_input_no_grad.detach() - cliped_input.detach() + cliped_input
        real_weights = self.weight.view(self.shape)
        binary_weights_no_grad = torch.sign(real_weights)
        cliped_weights = torch.clamp(real_weights, -1.0, 1.0)
        binary_weights = binary_weights_no_grad.detach() - cliped_weights.detach() + cliped_weights
        y = F.conv2d(x, binary_weights, stride=self.stride, padding=1)
        h_scale = self.h_scale[:, :, : y.shape[2], :]
        w_scale = self.w_scale[:, :, :, : y.shape[3]]
        return y * self.o_scale * h_scale * w_scale


FORMS = {  # name -> (activation binarizer factory(channels), binary conv class)
    "bireal": (lambda c: BiRealActivation(), HardBinaryConv),
    "reactnet": (lambda c: nn.Sequential(LearnableBias(c), BiRealActivation()), HardBinaryConv),
    "hardtanh_ste": (lambda c: HardtanhSTE(), XnorConv),
    "autograd_sign": (lambda c: SignActivation(), SignConv),
    "irnet": (lambda c: SignActivation(), IrConv),
    # torch.sign of the residual stream (which can be 0: a ternary activation) and TWN weights
    "twn": (lambda c: SignActivation(), TwnConv),
    # the same with TTQ's asymmetric {-Wn, 0, +Wp} weights
    "ttq": (lambda c: SignActivation(), TtqConv),
    # XNOR++: the conv binarizes its input itself; its output scales vary along rows and columns
    "xnorpp": (lambda c: nn.Identity(), XnorPlusPlusConv),
}


class LambdaLayer(nn.Module):
    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, x):
        return self.function(x)


PAD_SHORTCUT = {"irnet"}  # forms whose code downsamples the shortcut by slicing and zero channels (option A)


class Block(nn.Module):
    """Bi-Real's block: binarize, binary conv, batch norm, real-valued shortcut added. The
    downsampling shortcut is an average pool and a 1x1 float conv, or (IR-Net's ResNet-20, the
    CIFAR ResNet paper's option A) every other pixel with zero channels padded on."""

    def __init__(self, form, cin, cout, stride):
        super().__init__()
        act, conv = FORMS[form]
        self.binarize = act(cin)
        self.conv = conv(cin, cout, stride)
        self.bn = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if (stride != 1 or cin != cout) and form in PAD_SHORTCUT:
            extra = (cout - cin) // 2
            self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, extra, extra), "constant", 0))
        elif stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return self.bn(self.conv(self.binarize(x))) + self.shortcut(x)


class ResNet(nn.Module):
    """CIFAR ResNet: float stem, 3 stages of ``blocks`` pairs of binary blocks, float classifier."""

    def __init__(self, form, blocks=3, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        layers, cin = [], 16
        for stage, cout in enumerate((16, 32, 64)):
            for i in range(2 * blocks):
                layers.append(Block(form, cin, cout, 2 if stage and i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1))


def resnet(form: str, blocks: int = 3, seed: int = 0) -> ResNet:
    """An eval-mode ResNet of ``form`` with seeded random weights and batch-norm statistics (no
    trained weights can be had offline; exactness and speed do not depend on them)."""
    torch.manual_seed(seed)
    model = ResNet(form, blocks)
    randomize_batch_norms(model, mean_std=0.5, gamma_std=0.3)
    for module in model.modules():
        if isinstance(module, (HardBinaryConv, XnorConv, IrConv, SignConv, TwnConv, TtqConv, XnorPlusPlusConv)):
            nn.init.normal_(module.weight)
        if isinstance(module, XnorPlusPlusConv):  # trained scales: positive, full mantissas
            for scale in (module.o_scale, module.h_scale, module.w_scale):
                scale.data.uniform_(0.5, 1.5)
        if isinstance(module, TtqConv):  # trained scales: positive, unequal, not powers of two
            module.Wp.data.uniform_(0.3, 1.5)
            module.Wn.data.uniform_(0.3, 1.5)
            module.t = 0.4  # about a third of the weights 0
        if isinstance(module, LearnableBias):
            module.bias.data.normal_(0, 0.2)
    return model.eval()


def export(model: nn.Module, path, dynamo: bool, size: int = 32) -> str:
    """``torch.onnx.export`` as a user calls it, with PyTorch's new (``dynamo``) or legacy exporter."""
    x = torch.randn(1, 3, size, size)
    kwargs = {} if dynamo else {"dynamo": False}
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["logits"], **kwargs)
    return str(path)


class BinarizeConv2d(nn.Conv2d):
    """BinaryNet.pytorch: the input is binarized with ``sign`` (except a 3-channel image), the
    weights too."""

    def forward(self, x):
        if x.size(1) != 3:
            x = torch.sign(x)
        return F.conv2d(x, torch.sign(self.weight), None, self.stride, self.padding)


class BinaryNetBlock(nn.Module):
    """BinaryNet.pytorch's ResNet block: conv, BN, Hardtanh, conv, BN, residual add, BN, Hardtanh."""

    def __init__(self, cin, cout, stride, do_bntan=True):
        super().__init__()
        self.do_bntan = do_bntan
        self.conv1 = BinarizeConv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1, self.tanh1 = nn.BatchNorm2d(cout), nn.Hardtanh(inplace=True)
        self.conv2 = BinarizeConv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2, self.bn3, self.tanh2 = nn.BatchNorm2d(cout), nn.BatchNorm2d(cout), nn.Hardtanh(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(BinarizeConv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        residual = x.clone()
        out = self.tanh1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            residual = self.downsample(residual)
        out += residual
        return self.tanh2(self.bn3(out)) if self.do_bntan else out


class BinaryNetResNet(nn.Module):
    """``do_bntan=False`` blocks (BinaryNet's last one) pass the residual sum on as it is."""

    def __init__(self, blocks=1, classes=10, do_bntan=True):
        super().__init__()
        self.stem = nn.Sequential(BinarizeConv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.Hardtanh())
        layers, cin = [], 16
        for stage, cout in enumerate((16, 32, 64)):
            for i in range(blocks):
                layers.append(BinaryNetBlock(cin, cout, 2 if stage and i == 0 else 1, do_bntan))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1))


def binarynet_resnet(blocks: int = 1, seed: int = 0, do_bntan: bool = True) -> BinaryNetResNet:
    torch.manual_seed(seed)
    model = BinaryNetResNet(blocks, do_bntan=do_bntan)
    randomize_batch_norms(model, mean_std=2.0, gamma_std=0.5)
    return model.eval()


def randomize_batch_norms(model: nn.Module, mean_std: float, gamma_std: float) -> None:
    """Batch-norm statistics and affine parameters as training would leave them, roughly."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, mean_std)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.normal_(1, gamma_std)
            module.bias.data.normal_(0, 0.3)


from bnn_tvm.training.published_models import BiLinearLSR, BinaryQuantize, BiPointNet  # noqa: E402,F401  (the zoo's)


def bipointnet(points: int = 1024, seed: int = 0, binary: bool = True, **kwargs) -> BiPointNet:
    """An eval-mode BiPointNet with seeded random weights and batch-norm statistics."""
    torch.manual_seed(seed)
    model = BiPointNet(binary=binary, **kwargs)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.running_mean.normal_(0, 2.0)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.normal_(1, 0.5)
            module.bias.data.normal_(0, 0.3)
        if isinstance(module, BiLinearLSR):
            module.scale.data.uniform_(0.05, 0.2)
    return model.eval()


def export_points(model: nn.Module, path, dynamo: bool, points: int = 1024, batch: int = 1) -> str:
    """``torch.onnx.export`` of a point-cloud model with input ``[batch, points, 3]``."""
    x = torch.randn(batch, points, 3)
    kwargs = {} if dynamo else {"dynamo": False}
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["logits"], **kwargs)
    return str(path)


class BiBenchXnorConv(nn.Module):
    """BiBench's ``XNORConv2d`` (``bibench/models/layers/xnor.py``), written the way it writes it:
    the per-sample activation scale ``mean|x|`` (three chained means) multiplies the sign *inside*
    the straight-through estimator, and the weights are ``mean|W| * sign(W)`` per output channel
    with their own estimator through ``clamp(W)``. ``BiBenchBlock`` puts it in BiBench's
    ``BasicBlock`` with ``Hardtanh`` activations (``configs/acc_cifar10/resnet20_xnor_*.py``)."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.stride, self.shape = stride, (cout, cin, 3, 3)
        self.weight = nn.Parameter(torch.randn(*self.shape))

    def forward(self, x):
        real_input = x
        scaling_factor_x = torch.mean(torch.mean(torch.mean(abs(real_input), dim=3, keepdim=True), dim=2, keepdim=True),
                                      dim=1, keepdim=True).detach()
        binary_input_no_grad = scaling_factor_x * torch.sign(x)
        cliped_input = torch.clamp(x, -1.0, 1.0)
        x = binary_input_no_grad.detach() - cliped_input.detach() + cliped_input
        real_weights = self.weight.view(self.shape)
        scaling_factor = torch.mean(torch.mean(torch.mean(abs(real_weights), dim=3, keepdim=True), dim=2, keepdim=True),
                                    dim=1, keepdim=True).detach()
        binary_weights_no_grad = scaling_factor * torch.sign(real_weights)
        cliped_weights = torch.clamp(real_weights, -1.0, 1.0)
        binary_weights = binary_weights_no_grad.detach() - cliped_weights.detach() + cliped_weights
        return F.conv2d(x, binary_weights, stride=self.stride, padding=1)


class BiBenchBlock(nn.Module):
    """BiBench's ``BasicBlock`` (``bibench/models/backbones/resnet.py``) with Hardtanh: conv, BN,
    Hardtanh, conv, BN, shortcut (a float 1x1 conv and BN where the shape changes), add, Hardtanh."""

    def __init__(self, conv, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = conv(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = conv(cout, cout), nn.BatchNorm2d(cout)
        self.activation = nn.Hardtanh(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.activation(self.bn1(self.conv1(x)))))
        return self.activation(out + identity)


def bibench_resnet(conv, blocks: int = 1, seed: int = 0) -> nn.Module:
    """BiBench's CIFAR ResNet (float stem, BN, Hardtanh; 3 stages of ``blocks`` blocks of 16/32/64
    channels; average pool, linear) with ``conv`` as its binary conv; seeded random weights."""
    torch.manual_seed(seed)
    layers, cin = [nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.Hardtanh()], 16
    for stage, cout in enumerate((16, 32, 64)):
        for i in range(blocks):
            layers.append(BiBenchBlock(conv, cin, cout, 2 if stage and i == 0 else 1))
            cin = cout
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    randomize_batch_norms(model, mean_std=0.5, gamma_std=0.3)
    return model.eval()


class BiBenchFdaNoise(nn.Module):
    """BiBench's ``NoiseAdaption_a`` (``bibench/models/layers/fda.py``): an MLP over the channels
    at every pixel plus ``0.1 * sin(x)``."""

    def __init__(self, d, k=4):
        super().__init__()
        self.fc1 = nn.Linear(in_features=d, out_features=d // k, bias=False)
        self.fc2 = nn.Linear(in_features=d // k, out_features=d, bias=False)

    def forward(self, x):
        shape = x.shape
        _x = x
        x = x.view(shape[0], shape[1], -1).contiguous()
        x = x.permute(0, 2, 1).contiguous()
        x = self.fc2(F.relu(self.fc1(x)))
        x = x.permute(0, 2, 1).contiguous().reshape(shape)
        x += 0.1 * torch.sin(_x)
        return x


class FdaSign(torch.autograd.Function):
    """BiBench's ``FDA_BinaryQuantize``: sign forward (its backward is a Fourier series)."""

    @staticmethod
    def forward(ctx, inputs, n):
        return torch.sign(inputs)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output, None


class BiBenchFdaConv(nn.Conv2d):
    """BiBench's ``FDAConv2d`` (``bibench/models/layers/fda.py``) as it writes its forward: sign
    of weights and activations, each plus ``alpha`` times a noise term, the weights scaled by
    ``mean|W|`` per output channel. ``alpha`` is a buffer the training schedule decays to exactly
    0 at the last epoch (``model_params_update``), the value a trained model holds."""

    def __init__(self, cin, cout, stride=1):
        super().__init__(cin, cout, 3, stride, 1, bias=False)
        nn.init.normal_(self.weight)
        self.register_buffer("n", torch.tensor(9))
        self.register_buffer("alpha", torch.tensor(0.0))
        self.weight_noise_scale = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.1)
        self.act_noise = BiBenchFdaNoise(cin)

    def forward(self, input):
        w, a = self.weight, input
        bw = FdaSign().apply(w, self.n)
        ba = FdaSign().apply(a, self.n)
        bw = bw + self.alpha * (self.weight_noise_scale + 0.1 * torch.sin(w))
        ba = ba + self.alpha * self.act_noise(a)
        scaling_factor = torch.mean(torch.mean(torch.mean(abs(self.weight), dim=3, keepdim=True), dim=2, keepdim=True),
                                    dim=1, keepdim=True).detach()
        return F.conv2d(ba, bw * scaling_factor, self.bias, self.stride, self.padding, self.dilation, self.groups)
