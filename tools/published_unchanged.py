"""BiBench's own binarized layers and backbones, instantiated unchanged, through ``inspect``,
``verify`` and ``bench``.

    python tools/published_unchanged.py PATH/TO/BiBench [--algorithms bnn,xnor] [--archs resnet20]
                                        [--exporters torchscript,dynamo] [--repeat 20] [--json F]
                                        [--reactnet PATH/TO/ReActNet [--skip-bibench]]

``PATH/TO/BiBench`` is an extracted tree of https://github.com/htqin/BiBench (the folder holding
``BiBench/bibench`` and ``BiBench/configs``, or that ``BiBench`` folder itself). Its modules are
imported from there as they are; what cannot be imported offline, mmcv's and mmcls's registries,
builders and base classes, is replaced by the minimal shim below, which builds what the
configs name (``build_conv_layer(dict(type='BNNConv'), ...)`` looks the class up in the
registry BiBench's own ``init_layers()`` fills) and changes no layer code. The model is the
config file's (``configs/acc_cifar10/resnet20_<algorithm>_adam_1e-3_cosinelr.py``,
``configs/acc_imagenet/resnet18_<algorithm>.py``) merged with its ``_base_`` files as mmcv's
``Config`` merges them, the classifier mmcls's ``ImageClassifier``: backbone, global average
pooling, one linear layer.

``--reactnet`` adds ReActNet's official models (github.com/liuzechun/ReActNet, plain PyTorch:
``mobilenet/2_step2/reactnet.py`` and ``resnet/2_step2/birealnet.py``), imported unchanged.

Weights are random (seeded): every parameter normal, batch norms with non-trivial running
statistics, as a trained model has; where the algorithm's training schedule updates buffers
(``model_params_update``: ReCU's ``tau``, FDA's ``alpha``), they hold the values of the last
epoch. Each model is exported with ``torch.onnx.export(..., dynamo=False)`` and with the default
(dynamo) exporter, in eval mode.

Per model it prints: the binary MACs of the algorithm's layers (from the PyTorch model: the
convs whose class is one of BiBench's binarized layers), the share of them that run in binary
kernels (``inspect``: the MACs of the ``Conv`` nodes it reports binary), verify's verdict with how
many binarized tensors it compared, and ``bench --threads 1`` medians of bnn-tvm and ONNX Runtime
with their ratio, then the minimums and theirs (on a loaded machine the minimums are the steadier). Exit 1 when a model whose method is binary at inference runs less than 95 % of
its binary MACs in binary kernels or does not verify.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import importlib
import importlib.util
import json
import math
import os
import sys
import tempfile
import types
import warnings

import torch

from bnn_tvm.measure.bench.as_user import bench_as_user
from torch import nn

ALGORITHMS = ("bnn", "xnor", "dorefa", "bireal", "xnorplusplus", "react", "recu", "fda")
ARCHS = {  # name -> (config file pattern, input side)
    "resnet20": ("acc_cifar10/resnet20_{}_adam_1e-3_cosinelr.py", 32),
    "resnet18": ("acc_imagenet/resnet18_{}.py", 224),
    "bireal18": ("acc_cifar10/bireal18_{}_adam_1e-3_cosinelr.py", 32),
    "resnet34": ("acc_cifar10/resnet34_{}_adam_1e-3_cosinelr.py", 32),
}
MAX_EPOCHS = 400  # the CIFAR schedules' ``max_epochs``; ``model_params_update`` at the last epoch
REQUIRED_SHARE = 0.95


# The shim: mmcv's and mmcls's registries, builders and base classes, as small as BiBench needs --
class Registry:
    """mmcv.utils.Registry: name -> class; ``build(cfg)`` calls the class with the cfg's other keys."""

    def __init__(self, name, build_func=None):
        self.name, self.module_dict = name, {}

    def register_module(self, name=None, force=False, module=None):
        if module is not None:
            self.module_dict[name or module.__name__] = module
            return module
        return lambda cls: self.register_module(name, force, cls)

    def get(self, key):
        return self.module_dict.get(key)

    def build(self, cfg, *args, **kwargs):
        cfg = dict(cfg)
        return self.module_dict[cfg.pop("type")](*args, **cfg, **kwargs)


class BaseModule(nn.Module):
    """mmcv.runner.BaseModule: an ``nn.Module`` that keeps ``init_cfg`` (weights are set here)."""

    def __init__(self, init_cfg=None):
        super().__init__()
        self.init_cfg = copy.deepcopy(init_cfg)

    def init_weights(self):
        pass


def build_conv_layer(cfg, *args, **kwargs):
    """mmcv.cnn.build_conv_layer: ``Conv2d`` for None, else the registered class of ``cfg['type']``."""
    cfg = dict(type="Conv2d") if cfg is None else dict(cfg)
    layer = CONV_LAYERS.get(cfg.pop("type"))
    return layer(*args, **kwargs, **cfg)


def build_norm_layer(cfg, num_features, postfix=""):
    """mmcv.cnn.build_norm_layer for ``BN``: (``'bn' + postfix``, ``BatchNorm2d``)."""
    cfg = dict(cfg)
    kind, requires_grad = cfg.pop("type"), cfg.pop("requires_grad", True)
    if kind not in ("BN", "BN2d"):
        raise NotImplementedError(f"norm {kind!r} is not in this shim")
    layer = nn.BatchNorm2d(num_features, **cfg)
    for param in layer.parameters():
        param.requires_grad = requires_grad
    return f"bn{postfix}", layer


def build_activation_layer(cfg):
    return ACTIVATION_LAYERS.build(cfg)


def constant_init(module, val, bias=0):
    nn.init.constant_(module.weight, val)
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, bias)


class DropPath(nn.Module):  # identity at inference, as mmcv's
    def __init__(self, drop_prob=0.1):
        super().__init__()

    def forward(self, x):
        return x


class ConvModule(nn.Module):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("mmcv's ConvModule is not in this shim (deep stems, VGG)")


CONV_LAYERS, ACTIVATION_LAYERS = Registry("conv layer"), Registry("activation layer")
for _name, _cls in (("Conv", nn.Conv2d), ("Conv1d", nn.Conv1d), ("Conv2d", nn.Conv2d)):
    CONV_LAYERS.register_module(_name, module=_cls)
for _name, _cls in (("ReLU", nn.ReLU), ("PReLU", nn.PReLU), ("Hardtanh", nn.Hardtanh), ("Tanh", nn.Tanh)):
    ACTIVATION_LAYERS.register_module(_name, module=_cls)


def install_shim() -> None:
    """Put the shim's modules where BiBench imports mmcv and mmcls from."""
    modules = {
        "mmcv": {"__version__": "1.7.0"},
        "mmcv.utils": {"Registry": Registry},
        "mmcv.utils.parrots_wrapper": {"_BatchNorm": nn.modules.batchnorm._BatchNorm},
        "mmcv.cnn": {"CONV_LAYERS": CONV_LAYERS, "ACTIVATION_LAYERS": ACTIVATION_LAYERS, "ConvModule": ConvModule,
                     "build_conv_layer": build_conv_layer, "build_norm_layer": build_norm_layer,
                     "build_activation_layer": build_activation_layer, "constant_init": constant_init},
        "mmcv.cnn.bricks": {"DropPath": DropPath},
        "mmcv.runner": {"BaseModule": BaseModule},
        "mmcls": {},
        "mmcls.models": {},
        "mmcls.models.backbones": {},
        "mmcls.models.backbones.base_backbone": {"BaseBackbone": BaseModule},
    }
    for name, attributes in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        module.__path__ = []  # a package, so that its submodules import
        sys.modules[name] = module


# BiBench's tree and configs ---------------------------------------------------------------------
def bibench_root(path: str) -> str:
    """The folder holding ``bibench/`` and ``configs/``, from the tree's root or that folder."""
    for candidate in (os.path.join(path, "BiBench"), path):
        if os.path.isdir(os.path.join(candidate, "bibench", "models")) and os.path.isdir(os.path.join(candidate, "configs")):
            return os.path.abspath(candidate)
    raise SystemExit(f"{path}: not an extracted BiBench tree (no BiBench/bibench/models and BiBench/configs under it); "
                     "get one with `git clone https://github.com/htqin/BiBench` or "
                     "`git -C BARE_REPO archive HEAD | tar -x -C DIR`")


def import_bibench(root: str):
    install_shim()
    sys.path.insert(0, root)
    models = importlib.import_module("bibench.models")  # runs BiBench's init_layers(): fills CONV_LAYERS
    importlib.import_module("bibench.models.backbones.resnet_cifar")
    return models


def merge(base: dict, child: dict) -> dict:
    """mmcv ``Config``'s merge: child keys override, dicts merge key by key, ``_delete_`` replaces."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not value.get("_delete_"):
            out[key] = merge(out[key], value)
        else:
            out[key] = {k: v for k, v in value.items() if k != "_delete_"} if isinstance(value, dict) else value
    return out


def load_config(path: str) -> dict:
    """A BiBench config file with its ``_base_`` files merged in (mmcv ``Config.fromfile``)."""
    scope: dict = {}
    with open(path) as handle:
        exec(compile(handle.read(), path, "exec"), scope)
    own = {k: v for k, v in scope.items() if not k.startswith("__") and k != "_base_"}
    merged: dict = {}
    for base in scope.get("_base_", []):
        base_path = os.path.join(os.path.dirname(path), base)
        if not os.path.exists(base_path) and "/models/" not in base:
            # BiBench's acc_imagenet configs name a schedule its repository lacks
            # (schedules/adam_1e-3_cosinelr_e100.py); only the model section is used here
            continue
        merged = merge(merged, load_config(base_path))
    return merge(merged, own)


class ImageClassifier(nn.Module):
    """mmcls's ``ImageClassifier`` at inference: backbone, ``GlobalAveragePooling`` of its last
    output, ``LinearClsHead``'s linear layer (the logits)."""

    def __init__(self, backbone: nn.Module, in_channels: int, num_classes: int):
        super().__init__()
        self.backbone, self.fc = backbone, nn.Linear(in_channels, num_classes)

    def forward(self, x):
        features = self.backbone(x)
        features = features[-1] if isinstance(features, tuple) else features
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1))


BACKBONES = {"BiBench_ResNet": ("bibench.models.backbones.resnet", "ResNet"),
             "BiBench_ResNet_CIFAR": ("bibench.models.backbones.resnet_cifar", "ResNet_CIFAR"),
             "BiBench_ReActNet": ("bibench.models.backbones.reactnet", "ReActNet")}


def build_model(root: str, arch: str, algorithm: str) -> tuple[nn.Module, int]:
    pattern, side = ARCHS[arch]
    config = load_config(os.path.join(root, "configs", pattern.format(algorithm)))["model"]["arch"]
    backbone_cfg = dict(config["backbone"])
    module, name = BACKBONES[backbone_cfg.pop("type")]
    backbone = getattr(importlib.import_module(module), name)(**backbone_cfg)
    head = config["head"]
    model = ImageClassifier(backbone, head["in_channels"], head["num_classes"]).eval()
    with torch.no_grad():  # FDA's layers create their activation-noise modules at the first forward
        model(torch.zeros(1, 3, side, side))
    return model, side


# Weights -----------------------------------------------------------------------------------------
def randomize(model: nn.Module, seed: int) -> None:
    """Seeded random weights: parameters normal (scales positive where the layer multiplies by
    them), batch norms with non-trivial running statistics; the buffers a training schedule
    updates at their last-epoch values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "model_params_update"):
                module.model_params_update(MAX_EPOCHS, MAX_EPOCHS - 1)
            for name, param in module.named_parameters(recurse=False):
                value = torch.randn(param.shape, generator=generator)
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and name == "weight":
                    value = value * 0.3 + 1.0
                elif name in ("alpha", "o_scale", "h_scale", "w_scale"):
                    value = value.abs() * 0.5 + 0.5  # scales of the output
                elif name in ("channel_threshold", "bias") or isinstance(module, nn.PReLU):
                    value = value * 0.1
                param.copy_(value)
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) * 2 + 0.5)
    model.eval()


# Measuring ----------------------------------------------------------------------------------------
def is_bibench_layer(module: nn.Module) -> bool:
    """One of BiBench's binarized convs or linears (a class of ``bibench.models.layers``)."""
    return type(module).__module__.startswith("bibench.models.layers") and hasattr(module, "weight")


def is_reactnet_layer(module: nn.Module) -> bool:
    """ReActNet's and its Bi-Real's binary conv, ``HardBinaryConv``."""
    return type(module).__name__ == "HardBinaryConv"


def binary_layer_macs(model: nn.Module, side: int, is_binary_layer=is_bibench_layer) -> int:
    """MACs of the algorithm's binarized layers: output elements x the weight's fan-in (the
    layer's ``shape`` where it keeps its weights flat, as ReActNet's), from one forward pass."""
    macs = []

    def hook(module, inputs, output):
        shape = getattr(module, "shape", None) or module.weight.shape
        macs.append(math.prod(output.shape[1:]) * math.prod(shape[1:]))

    layers = [m for m in model.modules() if is_binary_layer(m)]
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, side, side))
    finally:
        for handle in handles:
            handle.remove()
    return sum(macs)


def onnx_conv_macs(path: str) -> dict[str, int]:
    """Per ``Conv``/``Gemm``/``MatMul`` node of the ONNX file: output elements x weight fan-in."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(path), data_prop=True)
    shapes = {}
    for info in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        shapes[info.name] = [d.dim_value for d in info.type.tensor_type.shape.dim]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    macs = {}
    for node in model.graph.node:
        if node.op_type == "Conv":
            macs[node.name] = math.prod(shapes[node.output[0]][1:]) * math.prod(shapes[node.input[1]][1:])
    return macs


def export(model: nn.Module, path: str, dynamo: bool, side: int) -> str:
    """``torch.onnx.export`` as a user calls it, with PyTorch's default (dynamo) or legacy exporter."""
    kwargs = {} if dynamo else {"dynamo": False}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, side, side),), path, input_names=["x"], output_names=["logits"], **kwargs)
    return path




def build_reactnet(root: str, arch: str) -> tuple[nn.Module, int]:
    """ReActNet's official models (github.com/liuzechun/ReActNet, step 2: binary weights and
    activations), imported from ``root`` as they are: ``reactnet-a`` (its MobileNet) and
    ``birealnet18`` (its Bi-Real ResNet-18), 224x224."""
    relative, factory = REACTNET_ARCHS[arch]
    spec = importlib.util.spec_from_file_location(f"reactnet_{arch.replace('-', '_')}", os.path.join(root, relative))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, factory)().eval(), 224


REACTNET_ARCHS = {"reactnet-a": ("mobilenet/2_step2/reactnet.py", "reactnet"),
                  "birealnet18": ("resnet/2_step2/birealnet.py", "birealnet18")}


def measure(built: tuple[nn.Module, int], arch: str, algorithm: str, dynamo: bool, folder: str, repeat: int,
            is_binary_layer=is_bibench_layer) -> dict:
    from bnn_tvm.compilation.inspection import inspect_onnx
    from bnn_tvm.compilation.verify import verify

    model, side = built
    randomize(model, seed=0)
    expected = binary_layer_macs(model, side, is_binary_layer)
    path = export(model, os.path.join(folder, f"{arch}_{algorithm}_{'dynamo' if dynamo else 'ts'}.onnx"), dynamo, side)
    row = {"arch": arch, "algorithm": algorithm, "exporter": "dynamo" if dynamo else "torchscript",
           "binary_macs": expected}
    try:
        macs = onnx_conv_macs(path)
        reports = inspect_onnx(path)
        row["binary_kernel_macs"] = sum(macs.get(r.name, 0) for r in reports if r.op_type == "Conv" and r.binary)
        row["float_notes"] = sorted({r.note for r in reports if r.op_type == "Conv" and not r.binary})
        report = verify(path, "x86")
        row["verify_ok"], row["binary_compared"] = report.ok, report.binary_checked
        measured = bench_as_user(path, repeat)
        timing, row["machine"] = measured["engines"], measured["machine"]
        row["bnn_tvm_ms"], row["ort_fp32_ms"] = timing["bnn_tvm"]["median_ms"], timing["ort_fp32"]["median_ms"]
        row["bnn_tvm_min_ms"], row["ort_fp32_min_ms"] = timing["bnn_tvm"]["min_ms"], timing["ort_fp32"]["min_ms"]
    except Exception as err:  # a crash is a result of the check, reported per model
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    row["share"] = row.get("binary_kernel_macs", 0) / expected if expected else 0.0
    return row


def passed(row: dict) -> bool:
    return "error" not in row and row["share"] >= REQUIRED_SHARE and row["verify_ok"]


def print_table(rows: list[dict]) -> None:
    print(f"{'arch':9} {'algorithm':13} {'exporter':12} {'binary MACs':>11} {'in binary kernels':>17} "
          f"{'verify':>12} {'bnn_tvm ms':>10} {'ORT ms':>8} {'vs ORT':>7} {'(minimums)':>22}")
    for r in rows:
        verdict = "-" if "verify_ok" not in r else f"{'OK' if r['verify_ok'] else 'FAILED'} ({r['binary_compared']})"
        timing = (f"{r['bnn_tvm_ms']:>10.3f} {r['ort_fp32_ms']:>8.3f} {r['ort_fp32_ms'] / r['bnn_tvm_ms']:>6.1f}x "
                  f"{r['bnn_tvm_min_ms']:>7.3f} {r['ort_fp32_min_ms']:>7.3f} {r['ort_fp32_min_ms'] / r['bnn_tvm_min_ms']:>5.1f}x"
                  if "bnn_tvm_ms" in r else f"{'-':>10} {'-':>8} {'-':>7}")
        print(f"{r['arch']:9} {r['algorithm']:13} {r['exporter']:12} {r['binary_macs'] / 1e6:>10.1f}M "
              f"{100 * r['share']:>16.1f}% {verdict:>12} {timing}")
        if "error" in r:
            print(f"    error: {r['error']}")
        for note in r.get("float_notes", []) if r["share"] < 1 else []:
            print(f"    float conv: {note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bibench", help="an extracted BiBench tree (github.com/htqin/BiBench)")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS), help="comma-separated subset of " + ", ".join(ALGORITHMS))
    parser.add_argument("--archs", default="resnet20", help="comma-separated subset of " + ", ".join(ARCHS))
    parser.add_argument("--exporters", default="torchscript,dynamo")
    parser.add_argument("--reactnet", metavar="PATH", help="also an extracted ReActNet tree (github.com/liuzechun/ReActNet): "
                        "its official models, unchanged")
    parser.add_argument("--reactnet-archs", default=",".join(REACTNET_ARCHS), help="subset of " + ", ".join(REACTNET_ARCHS))
    parser.add_argument("--skip-bibench", action="store_true", help="only the ReActNet models")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    if not os.path.exists(args.bibench):
        parser.error(f"{args.bibench}: no such folder; pass the path of an extracted BiBench tree "
                     "(`git clone https://github.com/htqin/BiBench`)")
    root = bibench_root(args.bibench)
    if args.reactnet and not os.path.isfile(os.path.join(args.reactnet, REACTNET_ARCHS["reactnet-a"][0])):
        parser.error(f"{args.reactnet}: not an extracted ReActNet tree (no {REACTNET_ARCHS['reactnet-a'][0]} in it)")
    for name, values, known in (("algorithm", args.algorithms, ALGORITHMS), ("arch", args.archs, ARCHS),
                                ("exporter", args.exporters, ("torchscript", "dynamo"))):
        unknown = [v for v in values.split(",") if v not in known]
        if unknown:
            parser.error(f"unknown {name}(s) {', '.join(unknown)}; known: {', '.join(known)}")
    import_bibench(root)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for arch in ([] if args.skip_bibench else args.archs.split(",")):
            for algorithm in args.algorithms.split(","):
                for exporter in args.exporters.split(","):
                    rows.append(measure(build_model(root, arch, algorithm), arch, algorithm, exporter == "dynamo",
                                        folder, args.repeat))
                    print_table(rows[-1:])
                    sys.stdout.flush()
        for arch in (args.reactnet_archs.split(",") if args.reactnet else []):
            for exporter in args.exporters.split(","):
                rows.append(measure(build_reactnet(args.reactnet, arch), arch, "react(official)", exporter == "dynamo",
                                    folder, args.repeat, is_reactnet_layer))
                print_table(rows[-1:])
                sys.stdout.flush()
    print()
    print_table(rows)
    machine = next((r["machine"] for r in rows if "machine" in r), None)
    if machine:
        print(f"machine: {machine}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
    return 0 if all(passed(r) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
