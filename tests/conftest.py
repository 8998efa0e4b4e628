"""Shared fixtures: one CPU thread, tiny separable data, tiny models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.data.loader import TensorLoader

# The test machines are small and shared: one thread keeps the suite fast and timings stable.
torch.set_num_threads(1)


def _blobs(n_per_class: int, num_classes: int, dim: int, seed: int):
    """Well separated Gaussian blobs: class c is centred at 4 * e_c."""
    g = torch.Generator().manual_seed(seed)
    centres = 4.0 * torch.eye(num_classes, dim)
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = centres[y] + 0.5 * torch.randn(len(y), dim, generator=g)
    return x, y


@pytest.fixture
def blobs():
    """(train_loader, val_loader, dim, num_classes) on a tiny, linearly separable problem.

    Call it again for an identical, fresh pair of loaders.
    """

    def make(batch_size: int = 16, seed: int = 0):
        dim, num_classes = 4, 3
        x, y = _blobs(32, num_classes, dim, seed=1)
        xv, yv = _blobs(20, num_classes, dim, seed=2)
        train = TensorLoader(x, y, batch_size, shuffle=True, seed=seed)
        val = TensorLoader(xv, yv, 64)
        return train, val, dim, num_classes

    return make


@pytest.fixture
def tiny_mlp():
    """Factory for a small MLP (with dropout, so that RNG state matters)."""

    def make(dim: int, num_classes: int, hidden: int = 16, dropout: float = 0.1, seed: int = 0):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )

    return make
