"""Checks shared by the sources that read a user's data as it is (npy, hf, a user's Dataset):
labels where -1 marks an unlabelled sample, and inputs checked by dtype and shape only."""

from __future__ import annotations

import numpy as np

from ..contracts import UNLABELLED
from ..errors import DistillError
from .labels import check_classes, check_labels


def check_pool_labels(y, name: str) -> np.ndarray:
    """`y` as int64 (N,): integer class indices >= 0, or -1 for an unlabelled sample."""
    y = np.asarray(y)
    if y.ndim == 1 and y.dtype.kind in "iuf":
        check_labels(np.where(y == UNLABELLED, 0, y), name=f"{name} (-1 marks unlabelled)")
    else:
        check_labels(y, name=name)  # the message for a wrong shape, dtype or an empty array
    return y.astype(np.int64)


def check_used_classes(labels: list[np.ndarray], name: str) -> None:
    """The labelled samples of every split name each class 0..K-1, and at least two."""
    y = np.concatenate(labels)
    check_classes(y[y != UNLABELLED], name)


def input_kind(dtype: np.dtype, shape: tuple[int, ...], name: str, images_hint: str) -> np.dtype:
    """The dtype a source serves inputs of `dtype` and per-sample `shape` as, checked without
    reading a value: uint8 (C, H, W) are images (kept uint8); other numbers are features
    (float32). `images_hint` says how to store other integer images as uint8."""
    if dtype.kind not in "biuf":
        raise DistillError(f"{name} are of type {dtype}; they must be numbers (int or float). "
                           "Convert them, e.g. x.astype(np.float32).")
    if len(shape) == 0 or 0 in shape:
        raise DistillError(f"{name} have shape {shape} per sample: no features. Give each sample "
                           "shaped (features,) or (channels, height, width), each at least 1.")
    if len(shape) == 3 and dtype.kind in "iu" and dtype != np.uint8:
        raise DistillError(
            f"{name} are {dtype} images shaped {shape}; images are read as 8-bit (uint8, C x H x W) "
            f"and the values are not scanned here. {images_hint}, or store float32 to use them as "
            "plain features."
        )
    if len(shape) == 3 and dtype == np.uint8 and shape[0] > 4 and shape[2] <= 4:
        raise DistillError(
            f"{name} are uint8 images shaped {shape} per sample: channels last (H x W x C), it "
            f"seems; images are C x H x W. Transpose them, e.g. x.transpose(0, 3, 1, 2)."
        )
    return np.dtype(np.uint8) if len(shape) == 3 and dtype == np.uint8 else np.dtype(np.float32)


def check_finite(x: np.ndarray, rows: np.ndarray, name: str) -> None:
    """Float rows `x` (the samples `rows`) hold no NaN or Inf: checked batch by batch as rows
    are read, so a large file is never scanned up front."""
    if x.dtype.kind != "f":
        return
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        raise DistillError(
            f"{name}: sample {int(rows[np.flatnonzero(bad)[0]])} holds a non-finite value (NaN or "
            "Inf); it would train nothing but NaN. Fill in or drop that sample."
        )
