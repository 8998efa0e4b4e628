"""MNIST / Fashion-MNIST from IDX files (raw or gzipped)."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np

from ..errors import DistillError
from .labels import _check_lengths, check_labels
from .memory import check_fits

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_MNIST_LAYOUT = (
    "MNIST / Fashion-MNIST expects the four IDX files train-images-idx3-ubyte, "
    "train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte, each raw or "
    "gzipped (.gz), in data.path or in data.path/raw"
)


def _idx_candidates(d: Path, stem: str):
    # Some mirrors spell 'train-images.idx3-ubyte' with a dot.
    alt = stem.replace("-idx", ".idx")
    for s in (stem, alt):
        for name in (s, s + ".gz"):
            yield d / name


def _find_idx(path: Path, stem: str) -> Path | None:
    for d in (path, path / "raw"):
        for f in _idx_candidates(d, stem):
            if f.is_file():
                return f
    return None


def _read_checked(f, file: Path) -> bytes:
    """The bytes of an IDX stream, read only after the size its header declares was checked
    against the memory budget (a small .gz can declare, and inflate to, gigabytes)."""
    head = f.read(4)
    if len(head) == 4 and head[:2] == b"\0\0" and head[2] in _IDX_DTYPES:
        head += f.read(4 * head[3])
        dims = np.frombuffer(head, dtype=">u4", count=(len(head) - 4) // 4, offset=4)
        nbytes = math.prod(int(d) for d in dims) * _IDX_DTYPES[head[2]].itemsize
        check_fits(nbytes, f"IDX file '{file}' (shape {tuple(int(d) for d in dims)})",
                   "Check that it is the file you meant; MNIST's train images take 45 MiB.")
        return head + f.read(nbytes + 1)  # one byte more, to notice trailing data
    return head + f.read()


def read_idx(file) -> np.ndarray:
    """Parse one IDX file (raw or .gz): magic 0x0000 | dtype byte | ndim byte, then big-endian
    uint32 dimensions, then the data in big-endian order. Returns a native-endian array."""
    file = Path(file)
    try:
        opener = gzip.open if file.suffix == ".gz" else open
        with opener(file, "rb") as f:
            raw = _read_checked(f, file)
    except (OSError, EOFError) as e:
        raise DistillError(f"Could not read IDX file '{file}' ({e}).") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DistillError(
            f"'{file}' is not an IDX file: it should start with a magic number "
            f"00 00 <type> <ndim> (type 08 for uint8); found {raw[:4].hex(' ') or 'nothing'}."
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DistillError(f"IDX file '{file}' has a truncated header ({ndim} dimensions).")
    dims = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise DistillError(
            f"IDX file '{file}' declares shape {dims} of {dtype.name}, which needs {expected} "
            f"bytes, but the file has {len(raw)} bytes (truncated or corrupt?)."
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="), copy=True)


def read_mnist(path):
    """Read MNIST or Fashion-MNIST IDX files (raw or .gz) from `path` (or `path/raw`).

    Returns (x_train, y_train, x_test, y_test): images uint8 (N, 1, 28, 28), labels int64.
    """
    p = Path(path)
    if not p.is_dir():
        what = "does not exist" if not p.exists() else "is not a folder"
        raise DistillError(f"Data path '{p}' {what}. {_MNIST_LAYOUT}.")
    files = {k: _find_idx(p, stem) for k, stem in _MNIST_FILES.items()}
    missing = [_MNIST_FILES[k] for k, f in files.items() if f is None]
    if missing:
        raise DistillError(f"Missing {', '.join(missing)} under '{p}'. {_MNIST_LAYOUT}.")
    out = []
    for split in ("train", "test"):
        fx, fy = files[f"{split}_images"], files[f"{split}_labels"]
        x, y = read_idx(fx), read_idx(fy)
        if x.ndim != 3 or x.dtype != np.uint8:
            raise DistillError(
                f"'{fx}' should hold uint8 images shaped (N, rows, cols); it holds "
                f"{x.dtype.name} {x.shape}."
            )
        if y.ndim != 1:
            raise DistillError(f"'{fy}' should hold a 1-D array of labels; it has {y.shape}.")
        _check_lengths(x, y, f"'{fx}' and '{fy}'")
        out += [x[:, None], check_labels(y, name=f"labels in '{fy}'")]
    return tuple(out)
