"""CIFAR-10/100 from the pickled batches of the "python version" archives, unpickled with a
whitelist of globals so a hostile pickle cannot run code."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ..errors import DistillError
from .labels import _check_lengths, check_labels

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
