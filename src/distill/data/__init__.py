"""Datasets and loaders. Items are (x, y, index); label -1 marks an unlabelled sample.

`build_data` makes the stratified train/val/test split with a fixed seed (independent of the
run's seed, so seeds vary initialisation and order, not the data), standardizes inputs with
training statistics, and applies `label_fraction`: labels are kept on a seeded, stratified
fraction of the training data and the rest form the unlabelled part of the transfer set.
The teacher always trains on every training label.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from ..distiller import UNLABELLED
from ..errors import DistillError
from .digits import load_digits_arrays
from .loader import TensorLoader

DATASETS = {"digits": load_digits_arrays}


@dataclass
class Data:
    teacher_train: TensorLoader  # every training label
    train: TensorLoader  # the student's transfer set: labels only on label_fraction of it
    val: TensorLoader
    test: TensorLoader
    num_classes: int
    in_shape: tuple[int, ...]
    counts: dict[str, int]


def _split(x, y, fraction, seed):
    """Stratified split; returns (rest, part) where part holds `fraction` of the rows."""
    return train_test_split(np.arange(len(y)), test_size=fraction, stratify=y, random_state=seed)


def _load_unlabelled(path: str, in_shape: tuple[int, ...]) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise DistillError(
            f"data.unlabelled_path '{path}' does not exist. It should be an .npz file with an "
            f"array 'x' of inputs shaped (N, {', '.join(map(str, in_shape))})."
        )
    with np.load(p) as f:
        if "x" not in f:
            raise DistillError(f"'{path}' has no array named 'x' (it has {list(f.keys())}).")
        x = f["x"].astype(np.float32)
    if tuple(x.shape[1:]) != in_shape:
        raise DistillError(
            f"Unlabelled inputs in '{path}' have shape {tuple(x.shape[1:])} per sample; "
            f"the dataset's inputs have {in_shape}."
        )
    return x


def build_data(cfg, seed: int = 0) -> Data:
    """Build loaders from a DataConfig. `seed` drives the shuffle order only."""
    if cfg.name not in DATASETS:
        raise DistillError(f"Unknown dataset '{cfg.name}'. Available: {', '.join(DATASETS)}.")
    x, y = DATASETS[cfg.name]()
    rest, test_idx = _split(x, y, cfg.test_fraction, cfg.split_seed)
    train_idx, val_idx = train_test_split(
        rest, test_size=cfg.val_fraction / (1 - cfg.test_fraction), stratify=y[rest],
        random_state=cfg.split_seed,
    )
    num_classes = int(y.max()) + 1
    in_shape = tuple(x.shape[1:])

    # Standardize every input feature with training-set statistics only.
    mean = x[train_idx].mean(axis=0, keepdims=True)
    std = x[train_idx].std(axis=0, keepdims=True)
    std[std == 0] = 1.0

    def norm(a):
        return torch.from_numpy((a - mean) / std)

    x_train, y_train = x[train_idx], y[train_idx]
    y_student = np.full_like(y_train, UNLABELLED)
    if cfg.label_fraction >= 1.0:
        y_student[:] = y_train
    else:
        n_keep = max(int(round(cfg.label_fraction * len(y_train))), num_classes)
        if n_keep >= len(y_train):
            y_student[:] = y_train
        else:
            keep, _ = train_test_split(
                np.arange(len(y_train)), train_size=n_keep, stratify=y_train,
                random_state=cfg.split_seed,
            )
            y_student[keep] = y_train[keep]
    x_student = x_train
    if cfg.unlabelled_path:
        extra = _load_unlabelled(cfg.unlabelled_path, in_shape)
        x_student = np.concatenate([x_train, extra])
        y_student = np.concatenate([y_student, np.full(len(extra), UNLABELLED, dtype=np.int64)])

    bs = cfg.batch_size
    return Data(
        teacher_train=TensorLoader(norm(x_train), torch.from_numpy(y_train), bs, True, seed),
        train=TensorLoader(norm(x_student), torch.from_numpy(y_student), bs, True, seed),
        val=TensorLoader(norm(x[val_idx]), torch.from_numpy(y[val_idx]), 512),
        test=TensorLoader(norm(x[test_idx]), torch.from_numpy(y[test_idx]), 512),
        num_classes=num_classes,
        in_shape=in_shape,
        counts={
            "train": len(x_train),
            "labelled": int((y_student != UNLABELLED).sum()),
            "unlabelled": int((y_student == UNLABELLED).sum()),
            "val": len(val_idx),
            "test": len(test_idx),
        },
    )
