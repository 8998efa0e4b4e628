"""`data.name: npy`: a folder of .npy arrays, memory-mapped: data larger than RAM.

data.path is a folder holding x.npy (inputs, N x ...) and y.npy (integer labels, N; -1 marks
an unlabelled sample), and optionally x_test.npy and y_test.npy for a predefined test split
(saved with np.save). The inputs are opened with np.load(mmap_mode="r"): only the headers are
read up front, and a loader reads the rows it needs (the streaming loader in its workers, the
memory loader all at once when they fit). The labels are small and read whole.

The inputs are checked by their header only (nothing is read that a batch does not need):
numbers (bool, int, float), at least one feature, and images (4-D integers) stored as uint8
N x C x H x W. They are not scanned for NaN or Inf up front (that would read the whole file);
every batch is checked as it is read, and a non-finite value stops the run with an error
naming the sample. Pickled (object) arrays are refused: loading them would run code.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..errors import DistillError, clip
from .checks import check_finite, check_pool_labels, check_used_classes, input_kind
from .samples import ArraySamples, Source

LAYOUT = ("A data.name=npy dataset is a folder (data.path) holding x.npy (inputs, N x ...) and "
          "y.npy (integer labels, N), and optionally x_test.npy and y_test.npy, saved with np.save")
_IMAGES_HINT = "Store them as uint8 (e.g. np.save('x.npy', x.astype(np.uint8)) for 0..255 values)"


class NpySamples(ArraySamples):
    """Rows of a memory-mapped .npy file, checked for NaN/Inf as they are read."""

    def __init__(self, x: np.ndarray, labels: np.ndarray, digest: str, name: str, dtype: np.dtype):
        super().__init__(x, labels, digest=digest)
        self.name, self.dtype = name, dtype  # float features are served as float32

    def take_rows(self, idx):
        x = np.asarray(self.x[idx], dtype=self.dtype)
        check_finite(x, idx, self.name)
        return x


def _load(path: Path, mmap: bool) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise DistillError(f"Could not read '{path}' ({e}). {LAYOUT}.") from None
    if magic != b"\x93NUMPY":
        what = "an .npz archive (np.savez)" if magic.startswith(b"PK") else f"not a .npy file (it starts with {magic!r})"
        raise DistillError(f"'{path}' is {what}; save each array with np.save(path, array). {LAYOUT}.")
    try:
        a = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        why = ("it holds Python objects (a pickled array), which are not loaded: loading them "
               "runs code" if "object" in text.lower() or "pickle" in text.lower() else clip(text, 200))
        raise DistillError(f"Could not read '{path}' as a .npy array: {why}. Save numbers with "
                           f"np.save(path, array). {LAYOUT}.") from None
    return a


def _digest(files: list[Path], x: np.ndarray) -> str:
    """File names, sizes, modification times and the array header: a multi-gigabyte file is
    recognised without being read (an edit keeping its size and mtime goes unnoticed)."""
    h = hashlib.sha256(f"npy{x.dtype}{x.shape}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _pair(root: Path, xname: str, yname: str, like: NpySamples | None = None) -> NpySamples:
    xp, yp = root / xname, root / yname
    x, y = _load(xp, mmap=True), _load(yp, mmap=False)
    where = f"'{xp}'"
    if x.ndim < 2:
        raise DistillError(f"The inputs in {where} have shape {x.shape}: no features per sample. Give x "
                           "shaped (N, features) or (N, channels, height, width).")
    dtype = input_kind(x.dtype, tuple(x.shape[1:]), f"The inputs in {where}", _IMAGES_HINT)
    y = check_pool_labels(y, f"the labels in '{yp}'")
    if len(x) != len(y):
        raise DistillError(f"{where} has {len(x)} samples but '{yp}' has {len(y)} labels; they must match.")
    if like is not None and (tuple(x.shape[1:]), dtype) != (like.sample_shape, like.dtype):
        raise DistillError(f"{where} has samples shaped {tuple(x.shape[1:])} ({x.dtype}) but x.npy has "
                           f"{like.sample_shape} ({like.x.dtype}); the test inputs must match.")
    return NpySamples(x, y, _digest([xp, yp], x), f"The inputs in {where}", dtype)


def open_npy(cfg):
    """The Source of data.name=npy (see the module docstring)."""
    if cfg.path is None or str(cfg.path) == "":
        raise DistillError(f"data.name=npy reads a folder: set data.path. {LAYOUT}.")
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is a file, not a folder"
        raise DistillError(f"Data path '{root}' {what}. {LAYOUT}.")
    for name in ("x.npy", "y.npy"):
        if not (root / name).is_file():
            present = sorted(p.name for p in root.iterdir())[:10]
            raise DistillError(f"'{root}' has no {name} (it holds {present or 'nothing'}). {LAYOUT}.")
    has_x, has_y = (root / "x_test.npy").is_file(), (root / "y_test.npy").is_file()
    if has_x != has_y:
        raise DistillError(f"'{root}' has {'x_test.npy' if has_x else 'y_test.npy'} but not "
                           f"{'y_test.npy' if has_x else 'x_test.npy'}; give both or neither.")
    train = _pair(root, "x.npy", "y.npy")
    test = _pair(root, "x_test.npy", "y_test.npy", like=train) if has_x else None
    check_used_classes([s.labels for s in (train, test) if s is not None], f"the labels in '{root}'")
    return Source(train, test=test, lazy=True)
