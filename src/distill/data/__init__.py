"""Datasets and loaders. Items are `contracts.Batch`es; label -1 marks an unlabelled sample.

`build_data` reads the named dataset (digits ships with scikit-learn; everything else is read
from `data.path`), splits it with a fixed seed independent of the run's seed (seeds vary
initialisation and order, not the data), and applies `label_fraction`: labels are kept on a
seeded, stratified fraction of the training data and the rest form the unlabelled part of the
transfer set. The teacher always trains on every training label.

Images (uint8, N x C x H x W) stay uint8 in memory and are normalized per channel with
training statistics on the fly, after the optional augmentation; tabular and digits inputs
are standardized per feature once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..contracts import UNLABELLED
from ..errors import DistillError, short
from .augment import Augment, Normalize, build_augment, channel_stats
from .digits import load_digits_arrays
from .loader import TensorLoader
from .readers import READERS, RawData, check_inputs, check_labels, read_dataset
from .tables import load_npz

DATASETS = ["digits", *READERS]


@dataclass
class Data:
    teacher_train: TensorLoader  # every training label
    train: TensorLoader  # the student's transfer set: labels only on label_fraction of it
    val: TensorLoader
    test: TensorLoader
    num_classes: int
    in_shape: tuple[int, ...]
    counts: dict[str, int]
    augment: Augment | None = None  # the training augmentation (None: none)


def _read(cfg) -> RawData:
    if cfg.name == "digits":
        x, y = load_digits_arrays()
        return RawData(x, y, None, None, None)
    if cfg.name not in READERS:
        raise DistillError(f"Unknown dataset '{cfg.name}'. Available: {', '.join(DATASETS)}.")
    return read_dataset(cfg.name, cfg.path, size=cfg.size, crop=cfg.crop, label_column=cfg.label_column)


def _stratified(idx: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    """Split `idx` into (rest, part) with `fraction` of it in part, stratified by y[idx]."""
    from sklearn.model_selection import train_test_split  # 1-4 s to import: only when splitting

    try:
        return train_test_split(idx, test_size=fraction, stratify=y[idx], random_state=seed)
    except ValueError as e:
        raise DistillError(
            f"Cannot make a stratified split of {len(idx)} samples with fraction {fraction}: {e}. "
            "Use more data or a larger fraction."
        ) from None


def _student_labels(y_train: np.ndarray, fraction: float, num_classes: int, seed: int) -> np.ndarray:
    y_student = np.full_like(y_train, UNLABELLED)
    n_keep = max(int(round(fraction * len(y_train))), num_classes)
    if fraction >= 1.0 or n_keep >= len(y_train):
        return y_train.copy()
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(
        np.arange(len(y_train)), train_size=n_keep, stratify=y_train, random_state=seed
    )
    y_student[keep] = y_train[keep]
    return y_student


def _load_unlabelled(path: str, in_shape: tuple[int, ...], dtype) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise DistillError(
            f"data.unlabelled_path '{path}' does not exist. It should be an .npz file with an "
            f"array 'x' of inputs shaped (N, {', '.join(map(str, in_shape))})."
        )
    layout = f"data.unlabelled_path should be an .npz file with an array 'x' of inputs shaped (N, {', '.join(map(str, in_shape))})"
    arrays = load_npz(p, layout)
    if "x" not in arrays:
        raise DistillError(f"'{path}' has no array named 'x' (it has {list(arrays)}).")
    x = check_inputs(arrays["x"], f"The unlabelled inputs in '{path}'")
    if tuple(x.shape[1:]) != in_shape:
        raise DistillError(
            f"Unlabelled inputs in '{path}' have shape {tuple(x.shape[1:])} per sample; "
            f"the dataset's inputs have {in_shape}."
        )
    return x.astype(dtype)


def _transforms(cfg, x_train: np.ndarray):
    """(prepare, train_transform, eval_transform, augment) for the dataset's kind of input; with
    a random augment the training loader draws it (and normalizes) itself."""
    is_image = x_train.dtype == np.uint8 and x_train.ndim == 4
    if not is_image:
        if cfg.augment not in (None, "none"):
            raise DistillError(
                f"data.augment={short(cfg.augment)} needs images (uint8, N x C x H x W); "
                f"'{cfg.name}' has inputs of shape {x_train.shape[1:]}. Set data.augment=none."
            )
        mean = x_train.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)
        std = x_train.std(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)
        std[std == 0] = 1.0
        return (lambda a: torch.from_numpy(((a - mean) / std).astype(np.float32))), None, None, None
    normalize = Normalize(*channel_stats(x_train, scale=1 / 255), scale=1 / 255)
    size = x_train.shape[-2:]
    augment = build_augment(cfg.augment or "none", size, normalize=normalize)
    eval_aug = Augment([normalize], size)

    def evaluate(x, epoch, index):
        return eval_aug.apply_eval(x)

    if augment is None or not augment.is_random:
        return torch.from_numpy, evaluate, evaluate, None
    return torch.from_numpy, None, evaluate, augment


def fingerprint(data: Data) -> str:
    """sha256 over every split's inputs and labels (after decoding, before the per-batch
    transform): a run folder records it so that eval/export notice data that changed since."""
    h = hashlib.sha256()
    for loader in (data.train, data.val, data.test):
        for t in (loader.x, loader.y):
            t = t.contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(memoryview(t.numpy()).cast("B"))
    return h.hexdigest()


def build_data(cfg, seed: int = 0) -> Data:
    """Build loaders from a DataConfig. `seed` drives the shuffle order and augmentation draws."""
    raw = _read(cfg)
    x, y = raw.x, check_labels(raw.y, name=f"{cfg.name} labels")
    if raw.x_test is not None:  # a predefined test split: carve validation out of train
        x_test, y_test = raw.x_test, check_labels(raw.y_test, name=f"{cfg.name} test labels")
        train_idx, val_idx = _stratified(np.arange(len(y)), y, cfg.val_fraction, cfg.split_seed)
    else:
        rest, test_idx = _stratified(np.arange(len(y)), y, cfg.test_fraction, cfg.split_seed)
        train_idx, val_idx = _stratified(rest, y, cfg.val_fraction / (1 - cfg.test_fraction), cfg.split_seed)
        x_test, y_test = x[test_idx], y[test_idx]
    num_classes = int(max(y.max(), y_test.max())) + 1
    in_shape = tuple(x.shape[1:])
    x_train, y_train = x[train_idx], y[train_idx]
    prepare, train_tf, eval_tf, augment = _transforms(cfg, x_train)

    y_student = _student_labels(y_train, cfg.label_fraction, num_classes, cfg.split_seed)
    x_student = x_train
    if cfg.unlabelled_path:
        extra = _load_unlabelled(cfg.unlabelled_path, in_shape, x_train.dtype)
        x_student = np.concatenate([x_train, extra])
        y_student = np.concatenate([y_student, np.full(len(extra), UNLABELLED, dtype=np.int64)])

    bs, ebs = cfg.batch_size, max(cfg.batch_size, 512)
    return Data(
        teacher_train=TensorLoader(prepare(x_train), torch.from_numpy(y_train), bs, True, seed,
                                   transform=train_tf, augment=augment),
        train=TensorLoader(prepare(x_student), torch.from_numpy(y_student), bs, True, seed,
                           transform=train_tf, augment=augment),
        val=TensorLoader(prepare(x[val_idx]), torch.from_numpy(y[val_idx]), ebs, transform=eval_tf),
        test=TensorLoader(prepare(x_test), torch.from_numpy(y_test), ebs, transform=eval_tf),
        num_classes=num_classes,
        in_shape=in_shape,
        counts={
            "train": len(x_train),
            "labelled": int((y_student != UNLABELLED).sum()),
            "unlabelled": int((y_student == UNLABELLED).sum()),
            "val": len(val_idx),
            "test": len(x_test),
        },
        augment=augment,
    )
