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
from .labels import check_classes, check_labels
from .memory import check_csv, check_npz
from .tables import read_csv, read_npz

__all__ = [
    "IMAGE_EXTENSIONS",
    "READERS",
    "RawData",
    "check_inputs",
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
    if Path(path).is_file():
        check_npz(path)  # before anything is inflated
    return RawData(*read_npz(path))


def _read_csv(path, label_column="label", **_):
    if Path(path).is_file():
        check_csv(path)  # before anything is parsed
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
    raw = READERS[name](p, size=size, crop=crop, label_column=label_column)
    if name in ("npz", "csv"):  # labels the user wrote: every class 0..K-1, at least two
        y = raw.y if raw.y_test is None else np.concatenate([raw.y, raw.y_test])
        check_classes(y, f"the labels in '{p}'")
    raw.x = check_inputs(raw.x, f"The inputs in '{p}'")
    if raw.x_test is not None:
        raw.x_test = check_inputs(raw.x_test, f"The test inputs (x_test) in '{p}'")
    return raw


def check_inputs(x: np.ndarray, name: str) -> np.ndarray:
    """`x` as a model can take it, or a DistillError naming the problem and how many values
    have it. Inputs must be numbers (bool, int or float), have at least one feature and be
    finite. Integer 4-D arrays are images (N, C, H, W) of 8 bits: other integer dtypes are
    converted to uint8 when every value lies in 0..255 (so they are normalized and augmented
    as images) and refused otherwise. Float inputs of any range are standardized per feature,
    so images as float in 0..1 and in 0..255 train the same."""
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise DistillError(f"{name} are of type {x.dtype}; they must be numbers (int or float). "
                           "Convert them, e.g. x.astype(np.float32).")
    if x.ndim < 2 or 0 in x.shape[1:]:
        raise DistillError(f"{name} have shape {x.shape}: no features per sample. Give x shaped "
                           "(N, features) or (N, channels, height, width), each at least 1.")
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        if bad.any():
            rows = np.flatnonzero(bad.reshape(len(x), -1).any(axis=1))
            raise DistillError(
                f"{name} hold {int(bad.sum())} non-finite value(s) (NaN or Inf) in {len(rows)} "
                f"sample(s), the first at sample {int(rows[0])}; they would train nothing but NaN. "
                "Fill in or drop those samples."
            )
    elif x.ndim == 4 and x.dtype != np.uint8:
        low, high = int(x.min()), int(x.max())
        if low < 0 or high > 255:
            raise DistillError(
                f"{name} are {x.dtype} images with values {low}..{high}; images are read as 8-bit "
                "(0..255). Scale them to uint8 (for 16-bit: (x >> 8).astype(np.uint8)), or give "
                "float32 to use them as plain features."
            )
        x = x.astype(np.uint8)
    return x
