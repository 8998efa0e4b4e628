"""Label checks shared by the dataset readers."""

from __future__ import annotations

import numpy as np

from ..errors import DistillError


def check_labels(y, num_classes: int | None = None, *, name: str = "labels") -> np.ndarray:
    """Return `y` as int64 (N,) after checking it holds integers in [0, num_classes).

    Without `num_classes` only negative labels are rejected (K is then max + 1). Float labels
    are accepted when every value is a whole number. `name` says where the labels came from
    and appears in error messages.
    """
    y = np.asarray(y)
    if y.size == 0:
        raise DistillError(f"The dataset is empty: {name} has no samples.")
    if y.ndim != 1:
        raise DistillError(
            f"{name} should be a 1-D array of integer class indices; it has shape {y.shape}."
        )
    if y.dtype == np.bool_:
        y = y.astype(np.int64)
    elif np.issubdtype(y.dtype, np.floating):
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DistillError(
                f"{name} must be integer class indices; found {y[i].item()!r} at position {i}."
            )
        y = y.astype(np.int64)
    elif not np.issubdtype(y.dtype, np.integer):
        raise DistillError(
            f"{name} must be integer class indices in [0, K); got values of type {y.dtype}."
        )
    y = y.astype(np.int64, copy=False)
    if num_classes is not None:
        if num_classes < 1:
            raise DistillError(f"num_classes must be at least 1, got {num_classes}.")
        bad = (y < 0) | (y >= num_classes)
        expected = f"[0, {num_classes})"
    else:
        bad = y < 0
        expected = "[0, K) (labels cannot be negative)"
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DistillError(
            f"{name} has label {int(y[i])} at position {i}, outside the expected range "
            f"{expected}; {int(bad.sum())} label(s) are out of range."
        )
    return y


def check_classes(y: np.ndarray, name: str) -> None:
    """Labels a user wrote (npz, csv) name every class 0..K-1, and at least two: a class that
    never occurs becomes an output the model cannot learn (labels {3, 7} would train 8 outputs),
    and one class alone makes every prediction right."""
    classes = np.unique(y)
    if len(classes) < 2:
        raise DistillError(
            f"{name} hold only one class ({int(classes[0])}); a classifier needs at least two. "
            "Add samples of the other classes, or check the label column."
        )
    if classes[-1] != len(classes) - 1:
        missing = _first_missing(classes, 11)  # not the set of 0..max: labels may be ~2**62
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise DistillError(
            f"{name} use {len(classes)} classes but not 0..{len(classes) - 1}: class(es) {shown} "
            f"never occur, and each would be an output no sample teaches. Renumber the labels, "
            f"e.g. y = np.unique(y, return_inverse=True)[1]."
        )


def _first_missing(classes: np.ndarray, n: int) -> list[int]:
    """The first n integers >= 0 that the sorted unique `classes` lack."""
    missing, present, i = [], set(classes.tolist()), 0
    while len(missing) < n and i <= int(classes[-1]):
        if i not in present:
            missing.append(i)
        i += 1
    return missing


def _check_lengths(x: np.ndarray, y: np.ndarray, where: str) -> None:
    if len(x) != len(y):
        raise DistillError(f"{where}: {len(x)} inputs but {len(y)} labels; they must match.")
