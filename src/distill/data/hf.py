"""`data.name: hf`: a Hugging Face dataset from local files (pip install distill[datasets]).

data.path is a file or a folder on this machine, never a Hub name: nothing is downloaded
(HF_DATASETS_OFFLINE and HF_HUB_OFFLINE are set before `datasets` is imported, and only its
built-in file builders are used). What it reads:

    a folder written by save_to_disk (dataset_dict.json or state.json)   load_from_disk
    a .parquet, .arrow, .csv, .json or .jsonl file                      that format's builder
    a folder of such files (one format)                                 that builder
    a folder of images (class subfolders; train/ test/ subfolders)      imagefolder

Split names follow the datasets library's conventions (train-*.parquet, test/, ...): train is
the pool (required), validation (val, valid) and test are used when present and carved out of
train, stratified, when not. The inputs are `data.image_column` (default "image"): an Image
column is decoded per row, converted to RGB uint8 C x H x W, resized and cropped by
data.size / data.crop (as image folders are) and must end up one size; a numeric column
(numbers, lists or arrays of them, one shape) is served as float32 features (uint8 C x H x W
arrays as images). The labels are `data.label_column` (default "label"): integers (-1:
unlabelled), a ClassLabel (its names name the classes) or strings (classes in sorted order).
Rows are read when a loader asks for them; `datasets` keeps its Arrow data memory-mapped in
its cache (HF_DATASETS_CACHE), which is where the file builders convert the files to, once.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..errors import DistillError, clip
from .checks import check_finite, check_pool_labels, check_used_classes, input_kind
from .image_folder import IMAGE_EXTENSIONS, fit_image, geometry
from .samples import Samples, Source

FORMATS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json", ".jsonl": "json"}
SPLITS = {"train": "train", "validation": "val", "val": "val", "valid": "val", "test": "test"}
_METADATA = ("metadata.csv", "metadata.jsonl", "metadata.parquet")  # imagefolder's optional labels
_INSTALL = "data.name=hf needs the datasets package: pip install distill[datasets] (or pip install datasets)."


def _datasets():
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise DistillError(_INSTALL) from None
    return datasets


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _builder(path: Path) -> tuple[str, dict]:
    """(builder name, load_dataset keyword arguments) for local `path`."""
    if path.is_file():
        if path.suffix.lower() not in FORMATS:
            raise DistillError(f"data.name=hf reads {', '.join(FORMATS)} files or folders; '{path}' is neither.")
        return FORMATS[path.suffix.lower()], {"data_files": str(path)}
    files = _files(path)
    kinds = {FORMATS[f.suffix.lower()] for f in files if f.suffix.lower() in FORMATS and f.name not in _METADATA}
    images = [f for f in files if f.suffix.lower() in IMAGE_EXTENSIONS]
    if images and not kinds:
        return "imagefolder", {"data_files": _split_files(path, images + [f for f in files if f.name in _METADATA])}
    if len(kinds) == 1:
        kind = kinds.pop()
        return kind, {"data_files": _split_files(path, [f for f in files if FORMATS.get(f.suffix.lower()) == kind])}
    found = ", ".join(sorted(kinds | ({"images"} if images else set()))) or "no data files"
    raise DistillError(f"'{path}' holds {found}; data.name=hf reads a folder of one kind of data files "
                       f"({', '.join(FORMATS)}), a folder of images, or a save_to_disk folder.")


def _split_files(root: Path, data: list[Path]) -> dict[str, list[str]]:
    """The files of `data` by split, as the datasets library names splits in a folder (train*,
    test/, ...); a file that belongs to no split is an error (the library would drop it)."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    wanted = {str(f.resolve()) for f in data}
    by_split = DataFilesDict.from_patterns(get_data_patterns(str(root)), base_path=str(root))
    splits = {str(s): [f for f in map(str, fs) if str(Path(f).resolve()) in wanted] for s, fs in by_split.items()}
    used = {str(Path(f).resolve()) for fs in splits.values() for f in fs}
    left = sorted(wanted - used)
    if left:
        raise DistillError(f"'{left[0]}' ({len(left)} file(s) in all) belongs to no split of '{root}': with "
                           f"split names in it ({', '.join(s for s, fs in splits.items() if fs)}), every file's "
                           "name or folder must say its split (train, validation/val/dev, test). Rename or move it.")
    return {s: fs for s, fs in splits.items() if fs}


def load_local(path: Path):
    """The DatasetDict (or Dataset) at local `path`, read with the datasets library."""
    datasets = _datasets()
    quiet = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            how, loaded = "load_from_disk", lambda: datasets.load_from_disk(str(path))
        else:
            builder, kwargs = _builder(path)
            how, loaded = f"the '{builder}' builder", lambda: datasets.load_dataset(builder, **kwargs)
        try:
            return loaded()
        except Exception as e:  # noqa: BLE001 - any failure to read local files is the data's
            raise DistillError(f"Could not read '{path}' with {how} of the datasets library: "
                               f"{type(e).__name__}: {clip(str(e), 300)}") from None
    finally:
        if not quiet:
            datasets.enable_progress_bars()


def _digest(path: Path) -> str:
    """Names, sizes and modification times of the files at `path`: nothing is read."""
    h = hashlib.sha256()
    for f in [path] if path.is_file() else _files(path):
        st = f.stat()
        h.update(f"{f.relative_to(path) if f != path else f.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class HFSamples(Samples):
    """Column `column` of a datasets.Dataset, read (and decoded) when `take` asks for rows."""

    def __init__(self, ds, column: str, labels: np.ndarray, name: str, digest: str, geo=None):
        ds = ds.select_columns([column])  # an image column decodes to PIL images, numbers to numpy
        self.ds = ds if geo is not None else ds.with_format("numpy")
        self.column, self.name, self.geometry = column, name, geo
        self.labels, self._digest = labels, digest
        first = self._row(0)
        self.first_dtype, self.sample_shape = first.dtype, tuple(first.shape)
        self.dtype = input_kind(first.dtype, self.sample_shape, f"Column '{column}' of {name}",
                                "Store uint8 arrays or an Image column")

    def _row(self, i: int, value=None) -> np.ndarray:
        """Row i's input as served (an image decoded, resized, cropped and made C x H x W)."""
        value = self._read([i])[0] if value is None else value
        if self.geometry is not None:
            return fit_image(value.convert("RGB"), self.geometry, f"row {i} of {self.name}").transpose(2, 0, 1)
        return np.asarray(value)

    def _read(self, rows: list[int]) -> list:
        try:
            return self.ds[rows][self.column]
        except (OSError, ValueError, SyntaxError) as e:  # a damaged image in one of the rows
            if len(rows) > 1:
                return [self._read([i])[0] for i in rows]  # finds the one and names it
            raise DistillError(f"Could not read row {rows[0]} of {self.name} (column '{self.column}'): "
                               f"{clip(str(e), 200)}. Fix or drop that row.") from None

    def take_rows(self, idx):
        out = np.empty((len(idx), *self.sample_shape), dtype=self.dtype)
        for k, (i, value) in enumerate(zip(idx.tolist(), self._read(idx.tolist()), strict=True)):
            x = self._row(i, value)
            if tuple(x.shape) != self.sample_shape or x.dtype != self.first_dtype:
                fix = ("set data.size and/or data.crop so that every image ends up the same size"
                       if self.geometry is not None else "every row needs the same shape and dtype")
                raise DistillError(f"Row {i} of {self.name} has a '{self.column}' of shape {tuple(x.shape)} "
                                   f"({x.dtype}) but row 0 has {self.sample_shape} ({self.first_dtype}); {fix}.")
            out[k] = x
        check_finite(out, idx, f"Column '{self.column}' of {self.name}")
        return out

    def fingerprint(self) -> str:
        """The files' names, sizes and times, the split, column, geometry, length and labels:
        the inputs are not hashed (an edit keeping a file's size and mtime goes unnoticed)."""
        h = hashlib.sha256(f"{self._digest}|{self.name}|{self.column}|{self.geometry}|{len(self)}".encode())
        h.update(self.labels.tobytes())
        return h.hexdigest()


def named_splits(loaded, path: Path) -> dict:
    """{"train": ds, "val": ds, "test": ds} (val and test optional) from what was loaded."""
    found = dict(loaded) if isinstance(loaded, dict) else {"train": loaded}  # DatasetDict is a dict
    unknown = [s for s in found if s not in SPLITS]
    if unknown or "train" not in found:
        raise DistillError(f"'{path}' has the splits {sorted(found)}; data.name=hf reads train (required), "
                           "validation (or val, valid) and test. Name the files or folders after them "
                           "(train-*.parquet, test/, ...).")
    return {SPLITS[s]: ds for s, ds in found.items()}


def _labels(parts: dict, column: str, path: Path) -> tuple[dict, list[str] | None]:
    """Each split's labels (int64, -1: unlabelled) and the class names, if the data name them."""
    datasets = _datasets()
    feature = parts["train"].features[column]
    raw = {s: np.asarray(ds[column]) for s, ds in parts.items()}
    names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    if names is None and all(a.dtype.kind == "U" for a in raw.values()):  # strings name the classes
        names = sorted({str(v) for a in raw.values() for v in a.tolist()})
        raw = {s: np.searchsorted(names, a.astype(str)) for s, a in raw.items()}
    labels = {s: check_pool_labels(a, f"column '{column}' of the {s} split of '{path}'") for s, a in raw.items()}
    check_used_classes(list(labels.values()), f"column '{column}' of '{path}'")
    return labels, names


def _check_columns(parts: dict, cfg, path: Path) -> None:
    for split, ds in parts.items():
        for key, column in (("image_column", cfg.image_column), ("label_column", cfg.label_column)):
            if column not in ds.column_names:
                raise DistillError(f"The {split} split of '{path}' has no column '{column}' (data.{key}); its "
                                   f"columns: {', '.join(ds.column_names)}. Set data.{key} to one of them.")


def open_hf(cfg) -> Source:
    """The Source of data.name=hf (see the module docstring)."""
    if cfg.path is None or str(cfg.path) == "":
        raise DistillError("data.name=hf reads local files: set data.path to a file or folder.")
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise DistillError(f"Data path '{path}' does not exist. data.name=hf reads local files only "
                           "(nothing is downloaded): give a folder or a .parquet/.arrow/.csv/.jsonl file.")
    datasets = _datasets()
    parts = named_splits(load_local(path), path)
    _check_columns(parts, cfg, path)
    is_image = isinstance(parts["train"].features[cfg.image_column], datasets.Image)
    if not is_image and (cfg.size is not None or cfg.crop is not None):
        raise DistillError(f"data.size / data.crop resize images, but column '{cfg.image_column}' of '{path}' "
                           "is not an Image column. Remove them.")
    geo = geometry(cfg.size, cfg.crop) if is_image else None
    labels, names = _labels(parts, cfg.label_column, path)
    digest = _digest(path)
    samples = {s: HFSamples(ds, cfg.image_column, labels[s], f"the {s} split of '{path}'", digest, geo)
               for s, ds in parts.items()}
    for s, part in samples.items():
        if (part.sample_shape, part.dtype) != (samples["train"].sample_shape, samples["train"].dtype):
            raise DistillError(f"The {s} split of '{path}' has inputs shaped {part.sample_shape}, the train "
                               f"split {samples['train'].sample_shape}; every split needs the same shape.")
    return Source(samples["train"], samples.get("val"), samples.get("test"), lazy=True, class_names=names)
