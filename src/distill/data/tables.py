"""Tabular datasets: .npz arrays and .csv files with a header row."""

from __future__ import annotations

import csv
import io
import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import DistillError, clip, short
from .labels import _check_lengths, check_labels

_NPZ_LAYOUT = (
    "An .npz dataset expects arrays 'x' (inputs, N x ...) and 'y' (integer labels, N), and "
    "optionally 'x_test' and 'y_test' for a predefined test split (saved with np.savez)"
)


def load_npz(p: Path, layout: str) -> dict[str, np.ndarray]:
    """Every array of the .npz archive `p`, or a DistillError naming what the file is instead
    (a single .npy array, not a zip at all, a truncated or foreign zip, pickled objects)."""
    try:
        with open(p, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise DistillError(f"Could not read '{p}' ({e}). {layout}.") from None
    if magic == b"\x93NUMPY":
        raise DistillError(f"'{p}' is a single .npy array, not an .npz archive of named arrays. Save "
                           f"the data with np.savez(path, x=..., y=...). {layout}.")
    if not magic.startswith(b"PK"):
        raise DistillError(f"Could not read '{p}' as an .npz file (a zip archive of .npy arrays): "
                           f"it starts with {magic!r}. {layout}.")
    try:
        with np.load(p, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        why = "pickled (object) arrays are not read" if "pickle" in str(e) else str(e).splitlines()[0]
        raise DistillError(
            f"Could not read '{p}' as an .npz file ({why}); it may be corrupt, truncated or another "
            f"kind of file. {layout}."
        ) from None


def read_npz(path):
    """Read arrays `x`, `y` and optional `x_test`, `y_test` from an .npz file.

    Returns (x, y, x_test, y_test); the test arrays are None when absent. Inputs keep their
    dtype; labels are int64.
    """
    p = Path(path)
    if not p.is_file():
        what = "does not exist" if not p.exists() else "is not a file"
        raise DistillError(f"Data path '{p}' {what}. {_NPZ_LAYOUT}.")
    arrays = load_npz(p, _NPZ_LAYOUT)
    keys = set(arrays)
    if not {"x", "y"} <= keys:
        raise DistillError(f"'{p}' has arrays {sorted(keys)}; it needs 'x' and 'y'. {_NPZ_LAYOUT}.")
    if ("x_test" in keys) != ("y_test" in keys):
        raise DistillError(f"'{p}' has only one of 'x_test' and 'y_test'; give both or neither.")
    x, y = arrays["x"], arrays["y"]
    _check_lengths(x, y, f"'{p}' (x, y)")
    y = check_labels(y, name=f"'y' in '{p}'")
    x_test = y_test = None
    if "x_test" in arrays:
        x_test = arrays["x_test"]
        y_test = check_labels(arrays["y_test"], name=f"'y_test' in '{p}'")
        _check_lengths(x_test, y_test, f"'{p}' (x_test, y_test)")
        if x_test.shape[1:] != x.shape[1:]:
            raise DistillError(
                f"In '{p}', x_test has samples shaped {x_test.shape[1:]} but x has "
                f"{x.shape[1:]}."
            )
    return x, y, x_test, y_test


def _feature(text: str, where: str, layout: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DistillError(f"{where}: {short(text)} is not a number. {layout}.") from None
    if not math.isfinite(value):
        raise DistillError(f"{where}: {short(text)} is not a finite number (NaN and Inf train "
                           "nothing but NaN). Fill in or drop the missing values.")
    return value


def _label(text: str, where: str, layout: str) -> int:
    try:
        value = float(text)
        if not value.is_integer():
            raise ValueError
    except ValueError:
        raise DistillError(f"{where}: {short(text)} is not an integer class label. {layout}.") from None
    return int(value)


def read_csv(path, label_column: str = "label", delimiter: str = ","):
    """Read a CSV with a header row: numeric feature columns plus an integer label column.

    Returns (x float32 (N, F), y int64 (N,)). Every other column is a feature, in file order.
    """
    p = Path(path)
    layout = (
        f"A CSV dataset expects a header row naming the columns, one column '{label_column}' "
        f"with integer class labels and only numeric feature columns"
    )
    if not p.is_file():
        what = "does not exist" if not p.exists() else "is not a file"
        raise DistillError(f"Data path '{p}' {what}. {layout}.")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DistillError(f"Could not read '{p}' as UTF-8 text ({e}).") from e
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        raise DistillError(f"The dataset is empty: '{p}' has no rows. {layout}.")
    header = [h.strip() for h in header]
    if label_column not in header:
        raise DistillError(
            f"'{p}' has no column '{label_column}' in its header row ({clip(', '.join(header), 300)}). "
            f"{layout}; set data.label_column if the labels are in another column."
        )
    li = header.index(label_column)
    feat = [i for i in range(len(header)) if i != li]
    rows, labels = [], []
    for row in reader:
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DistillError(
                f"'{p}' line {reader.line_num} has {len(row)} fields but the header has {len(header)}."
            )
        where = f"'{p}' line {reader.line_num}"
        rows.append([_feature(row[i], f"{where}, column '{header[i]}'", layout) for i in feat])
        labels.append(_label(row[li], f"{where}, column '{label_column}'", layout))
    if not rows:
        raise DistillError(f"The dataset is empty: '{p}' has a header but no data rows.")
    x = np.asarray(rows, dtype=np.float32).reshape(len(rows), len(feat))
    y = check_labels(np.asarray(labels, dtype=np.int64), name=f"'{label_column}' in '{p}'")
    return x, y
