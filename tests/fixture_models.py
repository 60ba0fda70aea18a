"""Small non-torchvision models, loaded by import path in the tests (``tests.fixture_models:tiny_cnn``)."""

from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    """A residual CNN whose forward does work outside child modules (flatten, mean, add)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.scale = nn.Parameter(torch.ones(1, 8, 1, 1))
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.block(x) * self.scale)
        return self.head(torch.flatten(x.mean(dim=(2, 3), keepdim=True), 1))


def tiny_cnn() -> nn.Module:
    return TinyCNN()


class Custom256(nn.Module):
    """A model that only runs at 256x256 (its head is sized for it), calls one module (``act``) twice,
    and carries the batch size across its middle (``x.reshape(b, -1)``), with five classes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.act = nn.ReLU()
        self.block = nn.Conv2d(8, 8, 3, stride=4, padding=1)
        self.head = nn.Linear(8 * 16 * 16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.size(0)
        x = self.act(self.stem(x))
        x = self.act(self.block(x))
        return self.head(x.reshape(b, -1))


def custom_256() -> nn.Module:
    return Custom256()


class WithAuxLogits(nn.Module):
    """Returns ``(logits, aux_logits)`` in eval mode too, as many training-oriented models do."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.fc = nn.Linear(8, 5)
        self.aux = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.stem(x).mean((2, 3))
        return self.fc(features), self.aux(features)


def with_aux_logits() -> nn.Module:
    return WithAuxLogits()


def needs_arguments(num_classes: int) -> nn.Module:
    return TinyCNN(num_classes)


def broken() -> nn.Module:
    raise RuntimeError("checkpoint directory missing")


def scripted_tiny_cnn() -> nn.Module:
    scripted: nn.Module = torch.jit.script(TinyCNN())
    return scripted


def compiled_tiny_cnn() -> nn.Module:
    compiled: nn.Module = torch.compile(TinyCNN())  # type: ignore[assignment]  # NOTE: compiles lazily, never here
    return compiled
