"""Datasets and loaders. Items are `contracts.Batch`es; label -1 marks an unlabelled sample.

`build_data` opens the named dataset as `Samples` (distill.data.source: digits ships with
scikit-learn; everything else is read from `data.path`), carves its splits
(distill.data.splits), and serves them with the loader `data.loader` picks: the in-memory
TensorLoader, or the StreamLoader whose workers read rows on demand (distill.data.stream).
Both walk the same seeded order and draw the same augmentations, so they train the same
student.

Images (uint8, N x C x H x W) stay uint8 and are normalized per channel with training
statistics on the fly, after the optional augmentation; tabular and digits inputs are
standardized per feature as they are read. Statistics take one pass over the training rows in
bounded memory (float64 accumulators over chunks, not a float64 copy).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DistillError, short
from ..stores import format_bytes
from .augment import Augment, Normalize, build_augment, channel_stats
from .loader import BatchLoader, TensorLoader
from .memory import data_memory_budget
from .readers import check_inputs
from .samples import ArraySamples, Mapped, Samples
from .source import SOURCES, Source, class_count, open_source, with_classes
from .splits import Splits, make_splits
from .stream import StreamLoader
from .tables import load_npz

DATASETS = list(SOURCES)


@dataclass
class Data:
    teacher_train: BatchLoader  # every training label
    train: BatchLoader  # the student's transfer set: labels only on label_fraction of it
    val: BatchLoader
    test: BatchLoader
    num_classes: int
    in_shape: tuple[int, ...]
    counts: dict[str, int]
    augment: Augment | None = None  # the training augmentation (None: none)
    loader: str = "memory"  # memory | stream: which loader serves the splits
    loader_note: str = ""  # why that loader (the run says it in its first lines)
    stats: dict = field(default_factory=dict)  # the normalization statistics (the run folder keeps them)
    class_names: list[str] | None = None  # the source's names of classes 0..K-1 (None: it names none)


def _load_unlabelled(path: str, like: Samples) -> Samples:
    in_shape = like.sample_shape
    p = Path(path)
    if not p.is_file():
        raise DistillError(
            f"data.unlabelled_path '{path}' does not exist. It should be an .npz file with an "
            f"array 'x' of inputs shaped (N, {', '.join(map(str, in_shape))})."
        )
    layout = f"data.unlabelled_path should be an .npz file with an array 'x' of inputs shaped (N, {', '.join(map(str, in_shape))})"
    arrays = load_npz(p, layout)
    if "x" not in arrays:
        raise DistillError(f"'{path}' has no array named 'x' (it has {list(arrays)}).")
    x = check_inputs(arrays["x"], f"The unlabelled inputs in '{path}'")
    if tuple(x.shape[1:]) != in_shape:
        raise DistillError(
            f"Unlabelled inputs in '{path}' have shape {tuple(x.shape[1:])} per sample; "
            f"the dataset's inputs have {in_shape}."
        )
    x = x.astype(like.dtype)
    return ArraySamples(x, np.full(len(x), -1, dtype=np.int64))


def feature_stats(samples: Samples, rows: int = 4096, workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std (float32, (1, *shape)) in two chunked float64 passes: bounded
    memory, and the same numbers whichever loader reads the rows."""
    n, total = len(samples), np.zeros(samples.sample_shape)
    for part in samples.chunks(rows, workers):
        total += part.sum(axis=0, dtype=np.float64)
    mean = total / n
    squares = np.zeros(samples.sample_shape)
    for part in samples.chunks(rows, workers):
        squares += np.square(part - mean).sum(axis=0)
    std = np.sqrt(squares / n)
    mean, std = mean[None].astype(np.float32), std[None].astype(np.float32)
    std[std == 0] = 1.0
    return mean, std


def _transforms(cfg, train: Samples, workers: int = 0):
    """(row_map, train_transform, eval_transform, augment, stats) for the dataset's kind of
    input: row_map standardizes features as rows are read (None for images); with a random
    augment the training loader draws it (and normalizes) itself. The statistics pass reads
    the training rows in `workers` processes."""
    is_image = train.dtype == np.uint8 and len(train.sample_shape) == 3
    if not is_image:
        if cfg.augment not in (None, "none"):
            raise DistillError(
                f"data.augment={short(cfg.augment)} needs images (uint8, N x C x H x W); "
                f"'{cfg.name}' has inputs of shape {train.sample_shape}. Set data.augment=none."
            )
        mean, std = feature_stats(train, workers=workers)
        stats = {"kind": "per_feature", "mean": mean.ravel().tolist(), "std": std.ravel().tolist()}
        return (lambda a: ((a - mean) / std).astype(np.float32)), None, None, None, stats
    mean, std = channel_stats(train, scale=1 / 255, workers=workers)
    normalize = Normalize(mean, std, scale=1 / 255)
    size = train.sample_shape[-2:]
    augment = build_augment(cfg.augment or "none", size, normalize=normalize)
    eval_aug = Augment([normalize], size)

    def evaluate(x, epoch, index):
        return eval_aug.apply_eval(x)

    stats = {"kind": "per_channel", "scale": 1 / 255, "mean": mean, "std": std}
    if augment is None or not augment.is_random:
        return None, evaluate, evaluate, None, stats
    return None, None, evaluate, augment, stats


def fingerprint(data: Data) -> str:
    """sha256 over every split's inputs and labels: a run folder records it so that
    eval/export notice data that changed since. In memory, the decoded rows (before the
    per-batch transform); streamed, each source's own digest (file names, sizes, times)."""
    h = hashlib.sha256()
    for loader in (data.train, data.val, data.test):
        if isinstance(loader, StreamLoader):
            h.update(loader.data_digest().encode())
            tensors = (loader.y,)
        else:
            tensors = (loader.x, loader.y)
        for t in tensors:
            t = t.contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(memoryview(t.numpy()).cast("B"))
    return h.hexdigest()


def loader_budget(cfg) -> int:
    """The bytes of decoded data the memory loader may hold: data.memory_limit_mb, or an eighth
    of physical RAM (the data share it with the models, the teacher cache and the workers)."""
    return cfg.memory_limit_mb << 20 if cfg.memory_limit_mb else data_memory_budget() // 4


def choose_loader(cfg, source: Source, extra: Samples | None = None) -> tuple[str, str]:
    """(memory | stream, why) from data.loader: "auto" holds data in memory when they are
    already decoded or, read from disk on demand, when all of them (with the `extra`
    unlabelled inputs) decoded fit the budget. Decided before the data are split or read."""
    if not source.lazy:
        if cfg.loader == "stream":
            return "stream", "stream (data.loader=stream)"
        return "memory", "memory (the data are decoded in RAM as they are read)"
    nbytes = sum(s.nbytes for s in (source.train, source.val, source.test, extra) if s is not None)
    budget = loader_budget(cfg)
    size = f"the data decode to {format_bytes(nbytes)}, the memory budget is {format_bytes(budget)}"
    if cfg.loader == "memory" and nbytes > budget:
        raise DistillError(
            f"data.loader=memory: {size}, so they would not fit. Use data.loader=stream (or auto), "
            "or raise data.memory_limit_mb if this machine has the memory."
        )
    if cfg.loader == "auto":
        kind = "memory" if nbytes <= budget else "stream"
        return kind, f"{kind} (data.loader=auto: {size})"
    return cfg.loader, f"{cfg.loader} (data.loader={cfg.loader}; {size})"


def _workers(cfg) -> int:
    return cfg.workers if cfg.workers is not None else max(0, min(4, (os.cpu_count() or 1) - 1))


def _loaders(cfg, kind: str, splits: Splits, seed: int, row_map, train_tf, eval_tf, augment):
    """The four loaders of `kind` over the splits."""
    bs, ebs = cfg.batch_size, cfg.eval_batch_size or max(cfg.batch_size, 512)
    mapped = {}

    def rows(samples: Samples) -> Samples:
        return samples if row_map is None else Mapped(samples, row_map, np.float32)

    def make(samples, labels, train: bool):
        size, tf, aug = (bs, train_tf, augment) if train else (ebs, eval_tf, None)
        if kind == "stream":
            return StreamLoader(rows(samples), size, train, seed, transform=tf, augment=aug, labels=labels,
                                # every loader keeps its workers for the whole run. Forking new ones
                                # for each evaluation, from a process running other threads, could
                                # hang a new worker before its first line (CPython 3.11's fork
                                # re-initialisation; the 2-process stream test hung in about 1 run
                                # in 6); now each loader forks once
                                workers=_workers(cfg), prefetch=cfg.prefetch, persistent=True,
                                pin_memory=torch.cuda.is_available())
        if id(samples) not in mapped:  # the teacher's and the students' rows, decoded once
            mapped[id(samples)] = torch.from_numpy(rows(samples).materialize())
        y = torch.from_numpy(samples.labels if labels is None else labels)
        return TensorLoader(mapped[id(samples)], y, size, train, seed, transform=tf, augment=aug)

    return (make(splits.teacher_train, None, True), make(splits.train, splits.student_labels, True),
            make(splits.val, None, False), make(splits.test, None, False))


def build_data(cfg, seed: int = 0, classes: list[str] | None = None) -> Data:
    """Build loaders from a DataConfig. `seed` drives the shuffle order and augmentation draws;
    with `classes` (a run's class names) the labels are those classes' (source.with_classes)."""
    source = open_source(cfg)
    source, num_classes = with_classes(source, classes) if classes is not None else (source, class_count(source))
    extra = _load_unlabelled(cfg.unlabelled_path, source.train) if cfg.unlabelled_path else None
    kind, note = choose_loader(cfg, source, extra)
    splits = make_splits(source, cfg, num_classes, extra)
    workers = _workers(cfg) if source.lazy else 0  # rows decoded on demand: in parallel
    if kind == "memory" and source.lazy:  # decoded once, here, for the statistics and the loaders
        splits = splits.decoded(workers)
    row_map, train_tf, eval_tf, augment, stats = _transforms(cfg, splits.teacher_train, workers if kind == "stream" else 0)
    teacher_train, train, val, test = _loaders(cfg, kind, splits, seed, row_map, train_tf, eval_tf, augment)
    return Data(teacher_train, train, val, test, num_classes, source.train.sample_shape, splits.counts(),
                augment=augment, loader=kind, loader_note=note, stats=stats,
                class_names=source.class_names)


def raw_splits(cfg) -> Splits:
    """The splits `build_data(cfg)` serves (without data.unlabelled_path, which only adds to the
    transfer set), as read: before standardization or normalization, i.e. the raw inputs a
    deployed model takes (distill export). Opens the source again; nothing is kept in Data."""
    source = open_source(cfg)
    return make_splits(source, cfg, class_count(source))
