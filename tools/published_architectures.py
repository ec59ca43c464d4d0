"""Published binarized architectures run from their public code, unchanged: BiBERT's encoder
layer (htqin/BiBERT), the BiPointNet classifier (htqin/BiPointNet) and BiBench's DFSMN
(htqin/BiBench, ``Libraries/BiSpeech`` with BiBench's ``BNNConv1d``/``BNNConv2d``).

    python tools/published_architectures.py --bibert DIR --bipointnet DIR --bibench DIR \\
        [--only bibert,bipointnet,dfsmn] [--out DIR] [--repeat 20] [--json F]

Each DIR is an extracted tree of that repository (``git archive HEAD | tar -x -C DIR``). The
models are built by the public classes with random weights and randomized batch norms (no
trained weights can be had offline), put in eval mode and exported with
``torch.onnx.export(dynamo=False)``; then each ONNX file goes through ``inspect`` (which ONNX
MAC nodes became binary kernels), ``summary`` (MACs by precision), ``verify`` and
``bench --threads 1 --engines bnn_tvm,ort_fp32`` (its own process, as a user runs it). Prints
one row per model; exit 1 if any model does not verify.

Only what the public code imports and this machine lacks is stood in for, never a layer:
plotting and data-loading packages the model files import but do not call (``seaborn``,
``yaml``, ``torch_geometric``), and for DFSMN the registries of OpenMMLab's ``mmcv``/``mmcls``
(``build_conv_layer`` and friends map a config's ``type`` to the class BiBench registers
under that name: ``BNNConv1d`` is BiBench's own class, ``BN1d`` is ``nn.BatchNorm1d``).
The harness feeds each model the tensor its forward pass works on: BiBERT's layer the hidden
states (its embeddings take token ids, not a float tensor) and an all-valid extended mask as
a constant; BiPointNet's classifier a ``[B, 3, N]`` point batch (its ``forward`` first stacks a
``torch_geometric`` batch into that; the rest of it is called as written); DFSMN the backbone
and the linear of mmcls's ``LinearClsHead`` (the logits, without the softmax of its test path).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import sys
import tempfile
import types
import warnings

import torch
import torch.nn.functional as F

from bnn_tvm.measure.bench.as_user import bench_as_user
from torch import nn

MODELS = ("bibert", "bipointnet", "dfsmn")
# The file each model's code is read from, relative to its repository's root.
REQUIRED = {
    "bibert": "transformer/modeling_quant.py",
    "bipointnet": "models/pointnet.py",
    "dfsmn": "Libraries/BiSpeech/bispeech/models/backbones/dfsmn.py",
}
BIBENCH_LAYERS = "BiBench/bibench/models/layers/bnn.py"


# ---------------------------------------------------------------------------------------------
# Stand-ins for packages the public code imports and this machine lacks
class _Absent:
    """A name from a package that is not installed: importable, fails if the model calls it."""

    def __init__(self, name: str):
        self._name = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self._name} is a stand-in (the package is not installed); the model called it")

    def __getattr__(self, attr):
        return _Absent(f"{self._name}.{attr}")


def _absent_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []  # a package, so that ``from name.sub import x`` finds ``name.sub`` below
    module.__getattr__ = lambda attr: _Absent(f"{name}.{attr}")
    return module


@contextlib.contextmanager
def missing_packages_stood_in(*names: str):
    """Puts a stand-in in ``sys.modules`` for each of ``names`` that does not import here."""
    added = []
    for name in names:
        try:
            if name not in sys.modules:
                importlib.import_module(name)
        except ImportError:
            sys.modules[name] = _absent_module(name)
            added.append(name)
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


def package_without_init(name: str, folder: str) -> types.ModuleType:
    """``folder`` as package ``name`` without running its ``__init__.py`` (which imports every
    model of the repository, and their CUDA extensions); its modules import as written."""
    package = types.ModuleType(name)
    package.__path__ = [folder]
    sys.modules[name] = package
    return package


def module_from_file(name: str, path: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def check_tree(model: str, root: str | None) -> str:
    """The repository root for ``model``, or a clear error naming what is missing."""
    flag = {"bibert": "--bibert", "bipointnet": "--bipointnet", "dfsmn": "--bibench"}[model]
    if not root:
        raise SystemExit(f"{model}: give {flag} DIR, an extracted tree of its public repository")
    needed = [REQUIRED[model]] + ([BIBENCH_LAYERS] if model == "dfsmn" else [])
    for relative in needed:
        if not os.path.isfile(os.path.join(root, relative)):
            raise SystemExit(f"{model}: {os.path.join(root, relative)} not found ({flag} must be the root of the "
                             "repository's tree)")
    return root


def randomize_norms(model: nn.Module, seed: int) -> nn.Module:
    """Batch norms' statistics and affine parameters, and LayerNorms' affine parameters, as
    training would leave them, roughly."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) * 1.5 + 0.5)
                if module.affine:
                    module.weight.copy_(1 + 0.3 * torch.randn(module.num_features, generator=generator))
                    module.bias.copy_(0.3 * torch.randn(module.num_features, generator=generator))
            elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
                module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
    return model


# ---------------------------------------------------------------------------------------------
# BiBERT: transformer/modeling_quant.py's BertLayer with utils_quant.py's QuantizeLinear
class BertLayerOnHiddenStates(nn.Module):
    """``BertLayer(hidden, mask)[0]``: the layer's output (its other outputs are the scores
    BiBERT distils from the teacher in training), the mask BertModel builds from an all-ones
    attention mask (``(1 - 1) * -10000``) as a constant."""

    def __init__(self, layer: nn.Module, tokens: int):
        super().__init__()
        self.layer = layer
        self.register_buffer("mask", torch.zeros(1, 1, 1, tokens))

    def forward(self, hidden_states):
        return self.layer(hidden_states, self.mask)[0]


def bibert(root: str, hidden: int = 256, heads: int = 4, ffn: int = 1024, tokens: int = 64, seed: int = 0):
    with missing_packages_stood_in("seaborn"):
        package_without_init("bibert_transformer", os.path.join(root, "transformer"))
        modeling = importlib.import_module("bibert_transformer.modeling_quant")
    config = modeling.BertConfig(vocab_size_or_config_json_file=30522, hidden_size=hidden, num_hidden_layers=1,
                                 num_attention_heads=heads, intermediate_size=ffn)
    # quant_task_glue.py sets these on the student's config: BiBERT is 1-bit weights and activations
    config.weight_bits, config.input_bits, config.quantize_act, config.clip_val = 1, 1, True, 2.5
    torch.manual_seed(seed)
    layer = modeling.BertLayer(config)
    with torch.no_grad():  # random biases: BertPreTrainedModel's init zeroes them, training would not
        for module in layer.modules():
            if isinstance(module, nn.Linear):
                module.bias.normal_(0, 0.1)
    model = BertLayerOnHiddenStates(randomize_norms(layer, seed), tokens).eval()
    return model, (1, tokens, hidden)


# ---------------------------------------------------------------------------------------------
# BiPointNet: models/pointnet.py's BasicBiPointNet (BiPointNetLSREMax: LSR linears, EMA-max)
class PointNetOnPoints(nn.Module):
    """``BasicBiPointNet.forward`` from the ``[B, 3, N]`` batch on: its first lines gather a
    torch_geometric batch into that tensor; the rest is the method's own code."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        net = self.net
        x, trans, trans_feat = net.feat(x)
        x = F.hardtanh(net.bn1(net.fc1(x)))
        x = F.hardtanh(net.bn2(net.fc2(x)))
        x = net.fc3(x)
        return F.log_softmax(x, dim=-1)


class IntKeyed(dict):
    """A dict whose missing key (a traced size, a 0-d tensor) is looked up as an ``int``."""

    def __missing__(self, key):
        if isinstance(key, int):
            raise KeyError(key)
        return self[int(key)]


def bipointnet(root: str, points: int = 1024, seed: int = 0, variant: str = "BiPointNetLSREMax"):
    sys.path.insert(0, root)  # models/_registry.py: ``from utils import Registry`` (the repository's utils/)
    try:
        with missing_packages_stood_in("yaml", "torch_geometric", "torch_geometric.data", "torch_geometric.nn"):
            package_without_init("bipointnet_models", os.path.join(root, "models"))
            pointnet = importlib.import_module("bipointnet_models.pointnet")
    finally:
        sys.path.remove(root)
    # TorchScript's tracer gives ``x.size()`` as tensors, and ``offset_map[N]`` (EMA-max's
    # offset per point count) hashes a tensor: look a missing key up by its integer value
    pointnet.offset_map = IntKeyed(pointnet.offset_map)
    torch.manual_seed(seed)
    net = randomize_norms(pointnet.MODELS({"type": variant}), seed).eval()  # as scripts/main.py builds it
    with torch.no_grad():  # BiLinearLSR sets its scale from the first batch it sees (reset_scale)
        net.feat(torch.randn(2, 3, points))
        PointNetOnPoints(net)(torch.randn(2, 3, points))
    return PointNetOnPoints(net).eval(), (1, 3, points)


# ---------------------------------------------------------------------------------------------
# DFSMN: Libraries/BiSpeech/bispeech/models/backbones/dfsmn.py with BiBench's BNN layers
class _Registry:
    """mmcv's ``Registry``, as far as dfsmn.py uses it: ``register_module()`` as a decorator."""

    def __init__(self):
        self.modules = {}

    def register_module(self, name=None, module=None, force=False):
        if module is not None:
            self.modules[name or module.__name__] = module
            return module
        return lambda cls: self.modules.setdefault(name or cls.__name__, cls)


def _mm_stand_ins(bnn) -> dict:
    """``mmcv.cnn``'s builders over the layers BiBench registers (``init_layers``) and mmcv's
    defaults (``Conv1d``, ``BN1d``, ``PReLU``, ...)."""
    conv = {"Conv1d": nn.Conv1d, "Conv2d": nn.Conv2d, "Linear": nn.Linear,
            "BNNConv1d": bnn.BNNConv1d, "BNNConv2d": bnn.BNNConv2d, "BNNLinear": bnn.BNNLinear}
    norm = {"BN1d": nn.BatchNorm1d, "BN2d": nn.BatchNorm2d, "BN": nn.BatchNorm2d}
    act = {"ReLU": nn.ReLU, "PReLU": nn.PReLU, "Hardtanh": nn.Hardtanh}

    def build(table):
        def builder(cfg, *args, **kwargs):
            cfg = dict(cfg)
            return table[cfg.pop("type")](*args, **kwargs, **cfg)
        return builder

    def build_norm_layer(cfg, features):
        cfg = dict(cfg)
        kind = cfg.pop("type")
        cfg.pop("requires_grad", None)
        return kind.lower(), norm[kind](features, **cfg)

    class BaseModule(nn.Module):
        def __init__(self, init_cfg=None):
            super().__init__()
            self.init_cfg = init_cfg

    cnn = types.ModuleType("mmcv.cnn")
    cnn.build_conv_layer, cnn.build_activation_layer, cnn.build_norm_layer = build(conv), build(act), build_norm_layer
    cnn.ConvModule = cnn.constant_init = _Absent("mmcv.cnn")
    bricks = types.ModuleType("mmcv.cnn.bricks")
    bricks.DropPath = _Absent("mmcv.cnn.bricks.DropPath")  # built only for drop_path_rate > 0
    runner = types.ModuleType("mmcv.runner")
    runner.BaseModule = BaseModule
    parrots = types.ModuleType("mmcv.utils.parrots_wrapper")
    parrots._BatchNorm = nn.modules.batchnorm._BatchNorm
    base_backbone = types.ModuleType("mmcls.models.backbones.base_backbone")
    base_backbone.BaseBackbone = BaseModule
    builder = types.ModuleType("mmcls.models.builder")
    builder.BACKBONES = _Registry()
    modules = {"mmcv.cnn": cnn, "mmcv.cnn.bricks": bricks, "mmcv.runner": runner,
               "mmcv.utils.parrots_wrapper": parrots, "mmcls.models.backbones.base_backbone": base_backbone,
               "mmcls.models.builder": builder}
    for name in ("mmcv", "mmcv.utils", "mmcls", "mmcls.models", "mmcls.models.backbones"):
        modules[name] = _absent_module(name)
    return modules


class DfsmnClassifier(nn.Module):
    """mmcls's ``ImageClassifier`` at inference, without the softmax of its test path:
    ``LinearClsHead.fc(backbone(x))``."""

    def __init__(self, backbone: nn.Module, classes: int, features: int):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(features, classes)

    def forward(self, x):
        return self.fc(self.backbone(x))


def dfsmn(root: str, frames: int = 32, seed: int = 0):
    bnn = module_from_file("bibench_bnn_layers", os.path.join(root, BIBENCH_LAYERS))
    saved = {name: sys.modules.get(name) for name in _mm_stand_ins(bnn)}
    sys.modules.update(_mm_stand_ins(bnn))
    try:
        code = module_from_file("bispeech_dfsmn", os.path.join(root, REQUIRED["dfsmn"]))
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    # configs/_base_/models/dfsmn.py with configs/acc_speech/dfsmn_bnn.py's layers
    torch.manual_seed(seed)
    backbone = code.Dfsmn(in_channels=1, n_mels=32, num_layer=8, frondend_channels=16, frondend_kernel_size=5,
                          hidden_size=256, backbone_memory_size=128, left_kernel_size=2, right_kernel_size=2,
                          dilation=1, drop_path_rate=0.0, conv2d_cfg=dict(type="BNNConv2d"),
                          conv1d_cfg=dict(type="BNNConv1d"), act_cfg=dict(type="PReLU"))
    with torch.no_grad():  # BiBench's BNN convs start at rand * 0.001, all positive: trained weights are not
        for module in backbone.modules():
            if isinstance(module, (bnn.BNNConv1d, bnn.BNNConv2d)):
                module.weight.normal_(0, 0.01)
    model = DfsmnClassifier(randomize_norms(backbone, seed), 12, 128 * frames // 4).eval()
    return model, (1, 1, 32, frames)


BUILDERS = {"bibert": bibert, "bipointnet": bipointnet, "dfsmn": dfsmn}


# ---------------------------------------------------------------------------------------------
# The checks
EXPORTERS = {"torchscript": False, "dynamo": True}  # torch.onnx.export(dynamo=...)


def export(model: nn.Module, shape: tuple, path: str, dynamo: bool) -> str | None:
    """The ONNX file, or why the exporter refused the public code (one line)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (torch.randn(shape),), path, dynamo=dynamo, input_names=["input"])
        except Exception as err:  # noqa: BLE001 (the exporters raise many types)
            lines = [line for line in str(err).splitlines() if "Could not guard" in line or "Error" in line]
            return f"{type(err).__name__}: {(lines or str(err).splitlines() or [''])[0].strip()[:160]}"
    return None


def mac_shares(path: str) -> dict:
    """From ``summary`` (MACs by precision per ONNX node) and ``inspect`` (which nodes became
    binary kernels): the binary MACs (1-bit operands) in binary kernels, and all MACs in binary
    kernels."""
    from bnn_tvm.compilation.inspection import inspect_onnx
    from bnn_tvm.measure.summary import summarize_onnx

    binary_nodes = {r.name for r in inspect_onnx(path) if r.binary}
    layers = [layer for layer in summarize_onnx(path).layers if layer.macs]
    total = sum(sum(layer.macs.values()) for layer in layers)
    one_bit = sum(layer.macs.get(1, 0) for layer in layers)
    one_bit_in_kernels = sum(layer.macs.get(1, 0) for layer in layers if layer.name in binary_nodes)
    in_kernels = sum(sum(layer.macs.values()) for layer in layers if layer.name in binary_nodes)
    float_left = [layer.name for layer in layers if layer.macs.get(1) and layer.name not in binary_nodes]
    return {"macs": total, "binary_macs": one_bit, "binary_macs_in_kernels": one_bit_in_kernels / max(one_bit, 1),
            "macs_in_kernels": in_kernels / max(total, 1), "binary_nodes_left_float": float_left}


def transposes_between_kernels(path: str) -> int:
    """Transposes (``permute_dims``) left in the compiled graph whose input comes from one of our
    kernels and whose output goes to one, through reshapes: a transpose kernel between binary
    layers."""
    from tvm import relax

    from bnn_tvm.compilation.compiler import lower_onnx

    func = lower_onnx(path).mod["main"]
    bindings = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    readers: dict = {}
    for var, value in bindings.items():
        for arg in getattr(value, "args", []):
            for item in (arg.fields if isinstance(arg, relax.Tuple) else [arg]):
                if isinstance(item, relax.Var):
                    readers.setdefault(item, []).append(var)

    def op(value) -> str:
        return value.op.name if isinstance(value, relax.Call) and hasattr(value.op, "name") else ""

    def kernel(value) -> bool:
        return op(value) == "relax.call_tir" and "bnn" in value.args[0].name_hint

    def from_kernel(var) -> bool:
        value = bindings.get(var)
        while op(value) == "relax.reshape":
            value = bindings.get(value.args[0])
        return kernel(value)

    def to_kernel(var) -> bool:
        return any(kernel(bindings[r]) or (op(bindings[r]) == "relax.reshape" and to_kernel(r))
                   for r in readers.get(var, []))

    return sum(1 for var, value in bindings.items()
               if op(value) == "relax.permute_dims" and from_kernel(value.args[0]) and to_kernel(var))




def measure(name: str, exporter: str, path: str, repeat: int) -> dict:
    from bnn_tvm.compilation.verify import verify

    row = {"model": name, "exporter": exporter, **mac_shares(path), "transposes": transposes_between_kernels(path)}
    report = verify(path, "x86")
    row.update(verify_ok=report.ok, verify_exact=report.exact, binary_compared=report.binary_checked,
               max_rel_diff=report.max_rel_diff)
    engines = (timing := bench_as_user(path, repeat))["engines"]
    row.update(bnn_tvm_ms=engines["bnn_tvm"]["median_ms"], ort_fp32_ms=engines["ort_fp32"]["median_ms"],
               bnn_tvm_min_ms=engines["bnn_tvm"].get("min_ms"), ort_fp32_min_ms=engines["ort_fp32"].get("min_ms"),
               machine=timing["machine"])
    row["speedup_vs_ort"] = row["ort_fp32_ms"] / row["bnn_tvm_ms"]
    return row


def print_table(rows: list[dict]) -> None:
    print(f"{'model':11} {'exporter':11} {'binary MACs':>11} {'in kernels':>10} {'all MACs':>8} {'transp.':>7} "
          f"{'verify':>13} {'bnn_tvm ms':>10} {'ORT ms':>8} {'vs ORT':>7}")
    for r in rows:
        if "export_error" in r:
            print(f"{r['model']:11} {r['exporter']:11} PyTorch's export failed: {r['export_error']}")
            continue
        if "error" in r:
            print(f"{r['model']:11} {r['exporter']:11} FAILED: {r['error']}")
            continue
        verdict = f"{'OK' if r['verify_ok'] else 'FAILED'}{'' if r['verify_exact'] else '*'} ({r['binary_compared']})"
        print(f"{r['model']:11} {r['exporter']:11} {r['binary_macs'] / 1e6:>10.1f}M {r['binary_macs_in_kernels']:>10.1%} "
              f"{r['macs_in_kernels']:>8.1%} {r['transposes']:>7} {verdict:>13} {r['bnn_tvm_ms']:>10.3f} "
              f"{r['ort_fp32_ms']:>8.3f} {r['speedup_vs_ort']:>6.1f}x")
        if r["binary_nodes_left_float"]:
            print(f"{'':23} binary MACs left float: {', '.join(r['binary_nodes_left_float'])}")
    machines = {json.dumps(r["machine"], sort_keys=True) for r in rows if "machine" in r}
    for machine in machines:
        print(f"machine: {machine}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bibert", help="extracted tree of htqin/BiBERT")
    parser.add_argument("--bipointnet", help="extracted tree of htqin/BiPointNet")
    parser.add_argument("--bibench", help="extracted tree of htqin/BiBench (DFSMN)")
    parser.add_argument("--only", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    parser.add_argument("--exporters", default=",".join(EXPORTERS), help="comma-separated subset of torchscript, dynamo")
    parser.add_argument("--out", help="keep the ONNX files here (default: a temporary folder)")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    models = args.only.split(",")
    if unknown := [m for m in models if m not in MODELS]:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    exporters = args.exporters.split(",")
    if unknown := [e for e in exporters if e not in EXPORTERS]:
        parser.error(f"unknown exporter(s) {', '.join(unknown)}; known: {', '.join(EXPORTERS)}")
    roots = {m: check_tree(m, {"bibert": args.bibert, "bipointnet": args.bipointnet, "dfsmn": args.bibench}[m])
             for m in models}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.out or scratch
        os.makedirs(folder, exist_ok=True)
        for name in models:
            model, shape = BUILDERS[name](roots[name])
            for exporter in exporters:
                path = os.path.join(folder, f"{name}_{exporter}.onnx")
                error = export(model, shape, path, EXPORTERS[exporter])
                if error is not None:
                    rows.append({"model": name, "exporter": exporter, "export_error": error})
                    continue
                try:
                    rows.append(measure(name, exporter, path, args.repeat))
                except Exception as err:  # noqa: BLE001 (a crash is a finding: the row says it, the others run)
                    first = (str(err).strip().splitlines() or [""])[-1][:200]
                    rows.append({"model": name, "exporter": exporter, "error": f"{type(err).__name__}: {first}",
                                 "verify_ok": False})
                print(f"{name} ({exporter}): done", file=sys.stderr)
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if all(r.get("verify_ok", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
