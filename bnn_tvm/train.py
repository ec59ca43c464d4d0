"""Training on scikit-learn digits: the binarized model and its float twin, reproducibly."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import models
from .data import digits_split
from .io import atomic_write
from .layers import clip_latent_weights


@dataclass
class TrainConfig:
    model: str = "digits"
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 5e-3
    seed: int = 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((predicted == y).mean())


def fit(model: nn.Module, config: TrainConfig, desc: str) -> nn.Module:
    seed_everything(config.seed)
    x_train, y_train, _, _ = digits_split()
    data = torch.utils.data.TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train))
    loader = torch.utils.data.DataLoader(
        data, batch_size=config.batch_size, shuffle=True, generator=torch.Generator().manual_seed(config.seed)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(config.epochs, 1))
    loss_fn = nn.CrossEntropyLoss()
    bar = tqdm(range(config.epochs), desc=desc, unit="epoch")
    for _epoch in bar:
        model.train()
        total = 0.0
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            clip_latent_weights(model)
            total += float(loss) * len(xb)
        schedule.step()
        bar.set_postfix(loss=f"{total / len(data):.3f}")
    return model.eval()


def train(config: TrainConfig) -> dict:
    """Train the binarized model and its float twin; returns the checkpoint dict."""
    _, _, x_test, y_test = digits_split()
    seed_everything(config.seed)
    binary = fit(models.build(config.model, binary=True), config, f"{config.model} (binary)")
    seed_everything(config.seed)
    twin = fit(models.build(config.model, binary=False), config, f"{config.model} (float twin)")
    metrics = {
        "test_accuracy": accuracy(binary, x_test, y_test),
        "float_test_accuracy": accuracy(twin, x_test, y_test),
        "epochs": config.epochs,
        "seed": config.seed,
    }
    return {"model": config.model, "state_dict": binary.state_dict(), "metrics": metrics}


def save_checkpoint(checkpoint: dict, path: str) -> None:
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def load_checkpoint(path: str) -> tuple[nn.Module, dict]:
    from .errors import BnnError

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        model = models.build(checkpoint["model"], binary=True)
        model.load_state_dict(checkpoint["state_dict"])
    except (OSError, RuntimeError, KeyError, TypeError) as err:
        raise BnnError(f"{path}: not a bnn_tvm checkpoint ({err})") from err
    return model.eval(), checkpoint


def write_metrics(metrics: dict, path: str) -> None:
    atomic_write(path, lambda tmp: open(tmp, "w").write(json.dumps(metrics, indent=2) + "\n"))
