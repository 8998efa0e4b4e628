"""Readers for datasets on disk: CIFAR-10/100, MNIST-style IDX files, image folders, .npz, .csv.

Every reader returns numpy arrays and never downloads anything. Images come back as uint8
(N, C, H, W); labels as int64 (N,), checked to lie in [0, K). A missing or malformed file raises
`DistillError` with a message that says which layout was expected and where it was looked for.

`read_dataset(name, path, ...)` dispatches on a dataset name and returns a `RawData` with the
optional predefined test split (`x_test` / `y_test` are None when the source has none).
"""

from __future__ import annotations

import csv
import gzip
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DistillError

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

IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm",
)


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------


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
                f"{name} must be integer class indices; found {y[i]!r} at position {i}."
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


def _check_lengths(x: np.ndarray, y: np.ndarray, where: str) -> None:
    if len(x) != len(y):
        raise DistillError(f"{where}: {len(x)} inputs but {len(y)} labels; they must match.")


# --------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------

_CIFAR = {
    10: {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "label": b"labels",
    },
    100: {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "label": b"fine_labels",
    },
}

# The only globals a CIFAR pickle needs: numpy arrays and (for protocol-2 pickles written by
# Python 3) bytes. Anything else is refused, so a hostile pickle cannot run code.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _cifar_layout(num_classes: int) -> str:
    spec = _CIFAR[num_classes]
    files = ", ".join(spec["train"] + spec["test"])
    label = spec["label"].decode()
    return (
        f"CIFAR-{num_classes} expects the python version of the dataset: a folder "
        f"'{spec['folder']}' holding the pickled batches {files} (dicts with keys b'data' and "
        f"b'{label}'); data.path may name that folder or the folder that contains it"
    )


def _find_cifar_dir(path: Path, num_classes: int) -> Path:
    spec = _CIFAR[num_classes]
    needed = spec["train"] + spec["test"]
    for d in (path, path / spec["folder"]):
        if d.is_dir() and all((d / f).is_file() for f in needed):
            return d
    layout = _cifar_layout(num_classes)
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
        raise DistillError(
            f"'{path}' is an archive; extract it first (tar xzf {path.name}). {layout}."
        )
    if not path.exists():
        raise DistillError(f"Data path '{path}' does not exist. {layout}.")
    for d in (path, path / spec["folder"]):
        if d.is_dir():
            missing = [f for f in needed if not (d / f).is_file()]
            if len(missing) < len(needed):
                raise DistillError(
                    f"'{d}' is missing {', '.join(missing)}. {layout}."
                )
    raise DistillError(f"No CIFAR-{num_classes} batches found under '{path}'. {layout}.")


def _load_cifar_batch(file: Path, label_key: bytes, num_classes: int):
    try:
        with open(file, "rb") as f:
            d = _SafeUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, ImportError) as e:
        raise DistillError(
            f"Could not read CIFAR batch '{file}' ({e}). {_cifar_layout(num_classes)}."
        ) from e
    if not isinstance(d, dict) or b"data" not in d or label_key not in d:
        keys = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise DistillError(
            f"CIFAR batch '{file}' should be a dict with keys b'data' and {label_key!r}; "
            f"found {keys}. {_cifar_layout(num_classes)}."
        )
    x = np.asarray(d[b"data"])
    y = np.asarray(d[label_key])
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise DistillError(
            f"b'data' in CIFAR batch '{file}' has shape {x.shape}; expected (N, 3072): "
            f"rows of 1024 red, then 1024 green, then 1024 blue uint8 values."
        )
    _check_lengths(x, y, f"CIFAR batch '{file}'")
    y = check_labels(y, num_classes, name=f"labels of '{file}'")
    return x.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32), y


def read_cifar(path, num_classes: int = 10):
    """Read CIFAR-10 (`cifar-10-batches-py`) or CIFAR-100 (`cifar-100-python`, fine labels).

    `path` is that folder or its parent. Returns (x_train, y_train, x_test, y_test) with images
    as uint8 (N, 3, 32, 32) and labels as int64 (N,).
    """
    if num_classes not in _CIFAR:
        raise DistillError(f"CIFAR has 10 or 100 classes; got num_classes={num_classes}.")
    d = _find_cifar_dir(Path(path), num_classes)
    label_key = _CIFAR[num_classes]["label"]

    def load(names):
        parts = [_load_cifar_batch(d / n, label_key, num_classes) for n in names]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    x_train, y_train = load(_CIFAR[num_classes]["train"])
    x_test, y_test = load(_CIFAR[num_classes]["test"])
    return x_train, y_train, x_test, y_test


# --------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST (IDX)
# --------------------------------------------------------------------------------------------

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


def read_idx(file) -> np.ndarray:
    """Parse one IDX file (raw or .gz): magic 0x0000 | dtype byte | ndim byte, then big-endian
    uint32 dimensions, then the data in big-endian order. Returns a native-endian array."""
    file = Path(file)
    try:
        if file.suffix == ".gz":
            with gzip.open(file, "rb") as f:
                raw = f.read()
        else:
            raw = file.read_bytes()
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


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------

_FOLDER_LAYOUT = (
    "An image folder dataset expects one subfolder per class (class index = position of the "
    "folder name in sorted order), each holding image files (" + ", ".join(IMAGE_EXTENSIONS)
    + ")"
)


def _pair(v, what: str) -> tuple[int, int] | None:
    if v is None:
        return None
    if isinstance(v, int):
        t = (v, v)
    else:
        t = tuple(int(a) for a in v)
        if len(t) != 2:
            raise DistillError(f"{what} must be an int or (height, width); got {v!r}.")
    if min(t) < 1:
        raise DistillError(f"{what} must be positive; got {v!r}.")
    return t


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def read_image_folder(path, size=None, crop=None):
    """Read a class-per-subfolder image dataset with Pillow, converted to RGB.

    `size`: an int resizes the shorter side to `size` keeping the aspect ratio; (h, w) resizes
    to exactly that. `crop` (int or (h, w)) then takes a centre crop. Without either, every
    image must already have the same size. Returns (x uint8 (N, 3, H, W), y int64 (N,),
    class_names list[str]).
    """
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as e:  # pragma: no cover - Pillow is a dependency
        raise DistillError("Reading image folders needs Pillow: pip install pillow.") from e

    root = Path(path)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise DistillError(f"Data path '{root}' {what}. {_FOLDER_LAYOUT}.")
    size_hw = None if size is None or isinstance(size, int) else _pair(size, "size")
    short_side = size if isinstance(size, int) else None
    if short_side is not None and short_side < 1:
        raise DistillError(f"size must be positive; got {size!r}.")
    crop_hw = _pair(crop, "crop")

    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and _visible(p))
    if not classes:
        loose = [p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
        hint = f" It holds images directly ({loose[0]}, ...) but no class subfolders." if loose else ""
        raise DistillError(f"'{root}' has no class subfolders.{hint} {_FOLDER_LAYOUT}.")

    files: list[tuple[Path, int]] = []
    for c, name in enumerate(classes):
        imgs = sorted(
            p for p in (root / name).iterdir()
            if p.is_file() and _visible(p) and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not imgs:
            raise DistillError(
                f"Class folder '{root / name}' contains no images. {_FOLDER_LAYOUT}."
            )
        files += [(f, c) for f in imgs]

    arrays, first = [], None
    for f, _ in files:
        try:
            with Image.open(f) as im:
                im = im.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
                Image.DecompressionBombError) as e:
            raise DistillError(f"Could not read image '{f}': {e}. Fix or remove the file.") from e
        if short_side is not None:
            w, h = im.size
            s = short_side / min(w, h)
            target = (max(1, round(w * s)), max(1, round(h * s)))
            if target != im.size:
                im = im.resize(target, Image.Resampling.BILINEAR)
        elif size_hw is not None and im.size != (size_hw[1], size_hw[0]):
            im = im.resize((size_hw[1], size_hw[0]), Image.Resampling.BILINEAR)
        if crop_hw is not None:
            w, h = im.size
            ch, cw = crop_hw
            if ch > h or cw > w:
                raise DistillError(
                    f"crop {ch}x{cw} is larger than image '{f}' ({h}x{w} after resizing); "
                    f"choose a smaller crop or a larger size."
                )
            top, left = (h - ch) // 2, (w - cw) // 2
            im = im.crop((left, top, left + cw, top + ch))
        a = np.asarray(im, dtype=np.uint8)
        if first is None:
            first = (f, a.shape)
        elif a.shape != first[1]:
            raise DistillError(
                f"Image '{f}' is {a.shape[0]}x{a.shape[1]} but '{first[0]}' is "
                f"{first[1][0]}x{first[1][1]}; set data.size and/or data.crop so that every "
                f"image ends up the same size."
            )
        arrays.append(a)
    x = np.stack(arrays).transpose(0, 3, 1, 2).copy()
    y = np.array([c for _, c in files], dtype=np.int64)
    return x, y, classes


# --------------------------------------------------------------------------------------------
# .npz and .csv
# --------------------------------------------------------------------------------------------

_NPZ_LAYOUT = (
    "An .npz dataset expects arrays 'x' (inputs, N x ...) and 'y' (integer labels, N), and "
    "optionally 'x_test' and 'y_test' for a predefined test split (saved with np.savez)"
)


def read_npz(path):
    """Read arrays `x`, `y` and optional `x_test`, `y_test` from an .npz file.

    Returns (x, y, x_test, y_test); the test arrays are None when absent. Inputs keep their
    dtype; labels are int64.
    """
    p = Path(path)
    if not p.is_file():
        what = "does not exist" if not p.exists() else "is not a file"
        raise DistillError(f"Data path '{p}' {what}. {_NPZ_LAYOUT}.")
    try:
        with np.load(p, allow_pickle=False) as f:
            keys = set(f.files)
            if not {"x", "y"} <= keys:
                raise DistillError(
                    f"'{p}' has arrays {sorted(keys)}; it needs 'x' and 'y'. {_NPZ_LAYOUT}."
                )
            if ("x_test" in keys) != ("y_test" in keys):
                raise DistillError(
                    f"'{p}' has only one of 'x_test' and 'y_test'; give both or neither."
                )
            arrays = {k: f[k] for k in ("x", "y", "x_test", "y_test") if k in keys}
    except DistillError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise DistillError(f"Could not read '{p}' as an .npz file ({e}). {_NPZ_LAYOUT}.") from e
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
            f"'{p}' has no column '{label_column}' in its header row ({', '.join(header)}). "
            f"{layout}; set data.label_column if the labels are in another column."
        )
    li = header.index(label_column)
    feat = [i for i in range(len(header)) if i != li]
    rows, labels = [], []
    for row in reader:
        if not row or all(not c.strip() for c in row):
            continue
        line = reader.line_num
        if len(row) != len(header):
            raise DistillError(
                f"'{p}' line {line} has {len(row)} fields but the header has {len(header)}."
            )
        vals = []
        for i in feat:
            try:
                vals.append(float(row[i]))
            except ValueError:
                raise DistillError(
                    f"'{p}' line {line}, column '{header[i]}': {row[i]!r} is not a number. "
                    f"{layout}."
                ) from None
        try:
            lab = float(row[li])
            if not lab.is_integer():
                raise ValueError
        except ValueError:
            raise DistillError(
                f"'{p}' line {line}, column '{label_column}': {row[li]!r} is not an integer "
                f"class label. {layout}."
            ) from None
        rows.append(vals)
        labels.append(int(lab))
    if not rows:
        raise DistillError(f"The dataset is empty: '{p}' has a header but no data rows.")
    x = np.asarray(rows, dtype=np.float32).reshape(len(rows), len(feat))
    y = check_labels(np.asarray(labels, dtype=np.int64), name=f"'{label_column}' in '{p}'")
    return x, y


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------


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
