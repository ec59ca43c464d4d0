"""Training on scikit-learn digits: the binarized model and its float twin, reproducibly.

Digits are 1x8x8 images. Zoo models with another input shape (3x32x32, 3x224x224) train on the
same images resized to their input: nearest-neighbour upsampling to H x W (an 8x8 digit becomes
4x4 or 28x28 blocks) and the grey channel repeated C times. The data is real; the task is the
same 10-class digits task, not CIFAR or ImageNet.
"""

from __future__ import annotations

import json
import pickle
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import models, quantizers
from .data import digits_split
from ..errors import BnnError
from ..atomic_files import atomic_write
from .layers import clip_latent_weights

DIGITS_SHAPE = (1, 8, 8)
DIGITS_CLASSES = 10
EVAL_BATCH = 128


@dataclass
class TrainConfig:
    model: str = "digits"
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 5e-3
    seed: int = 0
    input_quantizer: str | None = None  # None: the zoo model's default
    kernel_quantizer: str | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit_input(x: torch.Tensor, input_shape: tuple[int, ...] | None) -> torch.Tensor:
    """Digits batch [N, 1, 8, 8] as the model's input: nearest upsampling, grey repeated per channel."""
    if input_shape is None or tuple(input_shape) == tuple(x.shape[1:]):
        return x
    channels, height, width = input_shape
    if (height, width) != tuple(x.shape[2:]):
        x = F.interpolate(x, size=(height, width), mode="nearest")
    return x.expand(-1, channels, -1, -1) if channels != x.shape[1] else x


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, input_shape: tuple[int, ...] | None = None) -> float:
    model.eval()
    predicted = []
    with torch.no_grad():
        for start in range(0, len(x), EVAL_BATCH):
            batch = fit_input(torch.from_numpy(x[start : start + EVAL_BATCH]), input_shape)
            predicted.append(model(batch).argmax(dim=1).numpy())
    return float((np.concatenate(predicted) == y).mean())


def set_progress(model: nn.Module, epoch: int, epochs: int) -> None:
    """Advance every scheduled quantizer (IR-Net's EDE) to ``epoch`` of ``epochs``."""
    for module in model.modules():
        if hasattr(module, "set_progress"):
            module.set_progress(epoch, epochs)


def fit(model: nn.Module, config: TrainConfig, desc: str) -> nn.Module:
    seed_everything(config.seed)
    input_shape = models.input_shape(config.model)
    x_train, y_train, _, _ = digits_split()
    data = torch.utils.data.TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train))
    loader = torch.utils.data.DataLoader(
        data, batch_size=config.batch_size, shuffle=True, generator=torch.Generator().manual_seed(config.seed)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(config.epochs, 1))
    loss_fn = nn.CrossEntropyLoss()
    bar = tqdm(total=config.epochs * len(loader), desc=desc, unit="batch")
    for epoch in range(config.epochs):
        set_progress(model, epoch, config.epochs)
        model.train()
        total = 0.0
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(fit_input(xb, input_shape)), yb)
            loss.backward()
            optimizer.step()
            clip_latent_weights(model)
            total += float(loss.detach()) * len(xb)
            bar.update()
        schedule.step()
        bar.set_postfix(epoch=epoch + 1, loss=f"{total / len(data):.3f}")
    bar.close()
    return model.eval()


def train(config: TrainConfig) -> dict:
    """Train the binarized model and its float twin; returns the checkpoint dict."""
    options = models.options(config.model, config.input_quantizer, config.kernel_quantizer, DIGITS_CLASSES)
    input_shape = models.input_shape(config.model)
    _, _, x_test, y_test = digits_split()
    seed_everything(config.seed)
    binary = fit(models.build(config.model, binary=True, **options), config, f"{config.model} (binary)")
    seed_everything(config.seed)
    twin = fit(models.build(config.model, binary=False, **options), config, f"{config.model} (float twin)")
    metrics = {
        "test_accuracy": accuracy(binary, x_test, y_test, input_shape),
        "float_test_accuracy": accuracy(twin, x_test, y_test, input_shape),
        "epochs": config.epochs,
        "seed": config.seed,
        "model": config.model,
        "input_quantizer": options["input_quantizer"],
        "kernel_quantizer": options["kernel_quantizer"],
        "input_shape": list(input_shape),
        "data": "sklearn digits" + ("" if input_shape == DIGITS_SHAPE else f", resized to {'x'.join(map(str, input_shape))}"),
    }
    return {"model": config.model, "options": options, "state_dict": binary.state_dict(), "metrics": metrics}


def save_checkpoint(checkpoint: dict, path: str) -> None:
    def write(tmp: str) -> None:
        # through a file object: given a path, torch names its archive after the file's stem, and
        # the temporary's (".tmp-xxxx" for an output without ".pt") has none
        with open(tmp, "wb") as handle:
            torch.save(checkpoint, handle)

    atomic_write(path, write)


def load_checkpoint(path: str) -> tuple[nn.Module, dict]:
    """The binarized model of a checkpoint, in eval mode, and the checkpoint dict.

    Checkpoints without ``options`` (the bundled digits one) were trained with the zoo defaults.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        name = checkpoint["model"]
        options = checkpoint.get("options") or {}
    # what torch's weights-only unpickler raises on bytes that are not a pickle of plain data
    # (random bytes: an IndexError in about 1 of 15)
    except (OSError, RuntimeError, KeyError, IndexError, TypeError, AttributeError, ValueError, EOFError,
            pickle.UnpicklingError) as err:
        raise BnnError(f"{path}: not a bnn_tvm checkpoint (written by `train`): {_load_failure(err)}; for a "
                       "model of your own, export it to ONNX (torch.onnx.export) and give the .onnx file") from err
    check_checkpoint_fields(path, name, options)
    model = models.build(name, binary=True, **options)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, KeyError) as err:
        details = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())  # torch's spans lines
        raise BnnError(f"{path}: weights do not fit zoo model {name!r} ({details})") from err
    return model.eval(), checkpoint


# the fields a checkpoint's options may hold, with the quantizer role of the names each accepts
# (``quantizers.names``; None: any positive int)
CHECKPOINT_OPTIONS = {
    "input_quantizer": "activation",
    "kernel_quantizer": "weight",
    "num_classes": None,
}


def check_checkpoint_fields(path: str, name, options) -> None:
    """The model name and options a checkpoint carries are ones ``train`` writes: errors name the
    checkpoint and the field (they are not the user's ``--quantizer`` options)."""
    if not isinstance(name, str) or name not in models.ZOO:
        raise BnnError(f"{path}: field 'model' is {name!r}, not a zoo model ({', '.join(sorted(models.ZOO))})")
    if not isinstance(options, dict):
        raise BnnError(f"{path}: field 'options' is a {type(options).__name__}, not a dict of build options")
    for key, value in options.items():
        if key not in CHECKPOINT_OPTIONS:
            raise BnnError(f"{path}: field 'options' has an unknown key {key!r} (known: {', '.join(CHECKPOINT_OPTIONS)})")
        role = CHECKPOINT_OPTIONS[key]
        if value is None:  # the zoo's default
            continue
        allowed = quantizers.names(role) if role else None
        if allowed is None:
            if type(value) is not int or value < 1:
                raise BnnError(f"{path}: field 'options.{key}' is {value!r}, not a positive integer")
        elif not isinstance(value, str) or value.lower() not in allowed:
            raise BnnError(f"{path}: field 'options.{key}' is {value!r}, not one of: {', '.join(allowed)}")


def _load_failure(err: Exception) -> str:
    if isinstance(err, pickle.UnpicklingError):
        return "torch.load(weights_only=True) refused it: not a file of tensors and plain values"
    if isinstance(err, EOFError):
        return "the file is empty or cut short"
    if isinstance(err, KeyError):
        return f"it has no {err} entry"
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def write_metrics(metrics: dict, path: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as handle:
            handle.write(json.dumps(metrics, indent=2) + "\n")

    atomic_write(path, write)
