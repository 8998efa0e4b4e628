"""Readers for datasets on disk: CIFAR-10/100, MNIST-style IDX files, image folders, .npz, .csv.

Every reader returns numpy arrays and never downloads anything. Images come back as uint8
(N, C, H, W); labels as int64 (N,), checked to lie in [0, K). A missing or malformed file raises
`DistillError` with a message that says which layout was expected and where it was looked for.

`read_dataset(name, path, ...)` dispatches on a dataset name and returns a `RawData` with the
optional predefined test split (`x_test` / `y_test` are None when the source has none). The
format readers live in `cifar`, `idx`, `image_folder` and `tables`; the label checks in
`labels`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DistillError
from .cifar import read_cifar
from .idx import read_idx, read_mnist
from .image_folder import IMAGE_EXTENSIONS, read_image_folder
from .labels import check_labels
from .tables import read_csv, read_npz

__all__ = [
    "IMAGE_EXTENSIONS",
    "READERS",
    "RawData",
    "check_labels",
    "read_cifar",
    "read_csv",
    "read_dataset",
    "read_idx",
    "read_image_folder",
    "read_mnist",
    "read_npz",
]


@dataclass
class RawData:
    """Arrays as read from disk; `x_test`/`y_test` are None when there is no predefined split."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    class_names: list[str] | None = field(default=None)


def _read_cifar10(path, **_):
    return RawData(*read_cifar(path, 10))


def _read_cifar100(path, **_):
    return RawData(*read_cifar(path, 100))


def _read_mnist(path, **_):
    return RawData(*read_mnist(path))


def _read_folder(path, size=None, crop=None, **_):
    x, y, names = read_image_folder(path, size=size, crop=crop)
    return RawData(x, y, class_names=names)


def _read_npz(path, **_):
    return RawData(*read_npz(path))


def _read_csv(path, label_column="label", **_):
    return RawData(*read_csv(path, label_column=label_column))


READERS = {
    "cifar10": _read_cifar10,
    "cifar100": _read_cifar100,
    "mnist": _read_mnist,
    "fashion_mnist": _read_mnist,
    "folder": _read_folder,
    "npz": _read_npz,
    "csv": _read_csv,
}


def read_dataset(name: str, path, *, size=None, crop=None, label_column: str = "label") -> RawData:
    """Read dataset `name` (one of READERS) from `path`; options apply to folder / csv only."""
    if name not in READERS:
        raise DistillError(f"Unknown dataset '{name}'. Readers: {', '.join(READERS)}.")
    if path is None or str(path) == "":
        raise DistillError(f"Dataset '{name}' is read from disk: set data.path.")
    p = Path(path).expanduser()
    return READERS[name](p, size=size, crop=crop, label_column=label_column)
