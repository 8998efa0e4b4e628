"""Shared fixtures: one CPU thread, tiny separable data, tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


# Small data files that several modules' runs share (module-scoped: made once per module).


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    # 240 training rows after the validation split, global batch 48: every batch halves evenly.
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 16)) * 2
    y = np.arange(300) % 4
    x = (centers[y] + rng.normal(size=(300, 16))).astype(np.float32)
    path = tmp_path_factory.mktemp("data") / "blobs.npz"
    np.savez(path, x=x, y=y, x_test=x[:40], y_test=y[:40])
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """200 random 3x8x8 uint8 images in 4 classes (class c brightens channel 0), 48 test."""
    rng = np.random.default_rng(0)
    y = np.arange(200) % 4
    x = rng.integers(0, 256, (200, 3, 8, 8), dtype=np.uint8)
    x[:, 0] = np.clip(x[:, 0].astype(int) // 2 + 60 * y[:, None, None], 0, 255)
    path = tmp_path_factory.mktemp("images") / "images.npz"
    np.savez(path, x=x, y=y, x_test=x[:48], y_test=y[:48])
    return path
