"""Opening a dataset by name: what `data.name` reads, as `Samples` (distill.data.samples).

A `Source` is the dataset as found: its samples (the pool that training, validation and test
are carved from) and the splits it predefines. The eager readers (digits, CIFAR, MNIST, .npz,
.csv) decode into RAM as they always have; the others read rows on demand (`lazy`), so the
loader choice (data.loader) can stream them: image folders (decoded per sample,
distill.data.image_folder), memory-mapped .npy folders (distill.data.npy), local Hugging Face
datasets (distill.data.hf) and the user's own Dataset, named by a `package.module:function`
code path (distill.data.user_data). A new source is a function `open_<name>(cfg) -> Source`
added to SOURCES.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DistillError
from ..naming import did_you_mean
from ..terms import is_code_path
from .digits import load_digits_arrays
from .image_folder import open_image_folder
from .labels import check_labels
from .readers import READERS, read_dataset
from .samples import ArraySamples, Source


def _arrays(x, y, name: str) -> ArraySamples:
    return ArraySamples(x, check_labels(y, name=name))


def open_digits(cfg) -> Source:
    x, y = load_digits_arrays()
    return Source(_arrays(x, y, "digits labels"))


def _open_reader(cfg) -> Source:
    raw = read_dataset(cfg.name, cfg.path, size=cfg.size, crop=cfg.crop, label_column=cfg.label_column)
    test = None if raw.x_test is None else _arrays(raw.x_test, raw.y_test, f"{cfg.name} test labels")
    return Source(_arrays(raw.x, raw.y, f"{cfg.name} labels"), test=test, class_names=raw.class_names)


def open_folder(cfg) -> Source:
    """A class-per-subfolder image folder, decoded per sample when a loader reads it."""
    if cfg.path is None or str(cfg.path) == "":
        raise DistillError("Dataset 'folder' is read from disk: set data.path.")
    samples, classes = open_image_folder(Path(cfg.path).expanduser(), size=cfg.size, crop=cfg.crop,
                                         skip_corrupt=cfg.skip_corrupt)
    return Source(samples, lazy=True, class_names=classes)


def open_npy(cfg) -> Source:
    from .npy import open_npy as open_

    return open_(cfg)


def open_hf(cfg) -> Source:
    from .hf import open_hf as open_  # imports `datasets` only when asked for

    return open_(cfg)


SOURCES = {"digits": open_digits, **{name: _open_reader for name in READERS}, "folder": open_folder,
           "npy": open_npy, "hf": open_hf}


def open_source(cfg) -> Source:
    """The Source that `cfg.name` names (a DataConfig): a SOURCES key, or the user's own
    dataset function as `package.module:function` (distill.data.user_data)."""
    name = cfg.name
    if name in SOURCES:
        return SOURCES[name](cfg)
    if is_code_path(name):
        from .user_data import open_user

        return open_user(cfg)
    raise DistillError(f"Unknown dataset '{name}'.{did_you_mean(name, SOURCES)} Available: "
                       f"{', '.join(SOURCES)}, or your own as package.module:function (a function "
                       "returning a torch Dataset of (input, label) pairs).")


def class_count(source: Source) -> int:
    """K: one more than the largest label in any split."""
    parts = [s for s in (source.train, source.val, source.test) if s is not None]
    return int(max(int(np.max(p.labels, initial=-1)) for p in parts)) + 1


def with_classes(source: Source, classes: list[str]) -> tuple[Source, int]:
    """(`source` labelled by a run's `classes`, K = len(classes)): other data of the run's
    classes, or of some of them (`distill eval RUN --data ...`). A source that names its classes
    (folders, string labels) is looked up by name, so a missing or reordered class cannot shift
    the others; one that does not (integer labels) must stay within the run's K."""
    parts = [s for s in (source.train, source.val, source.test) if s is not None]
    if source.class_names is None:
        found = class_count(source)
        if found > len(classes):
            raise DistillError(f"These data have labels up to {found - 1}, but the run has {len(classes)} classes "
                               f"(0..{len(classes) - 1}). Give data of the run's classes.")
        return source, len(classes)
    index = {name: i for i, name in enumerate(classes)}
    unknown = [n for n in source.class_names if n not in index]
    if unknown:
        raise DistillError(f"These data have classes the run has no output for: {', '.join(unknown[:5])}. The run's "
                           f"classes: {', '.join(classes[:20])}.")
    lut = np.array([index[n] for n in source.class_names], dtype=np.int64)
    for part in parts:  # freshly opened: relabelled in place (-1, unlabelled, stays)
        part.labels = np.where(part.labels >= 0, lut[np.maximum(part.labels, 0)], part.labels)
    source.class_names = list(classes)
    return source, len(classes)
