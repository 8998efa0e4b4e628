"""Carving a Source into the teacher's training set, the student's transfer set, validation
and test, with a fixed seed (`data.split_seed`, independent of the run's seed: seeds vary
initialisation and order, not the data).

Missing splits are carved out of the labelled training pool, stratified. `label_fraction`
keeps labels on a seeded, stratified fraction of the training data for the students; the rest
(and any sample labelled -1, and data.unlabelled_path) form the unlabelled part of the
transfer set. The teacher always trains on every training label. Splits are row indices into
the source's samples (`Samples.subset`): nothing is copied.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..contracts import UNLABELLED
from ..errors import DistillError
from .samples import ArraySamples, Samples, Source, concat


@dataclass
class Splits:
    teacher_train: Samples  # every training label
    train: Samples  # the transfer set; its labels are `student_labels`
    student_labels: np.ndarray
    val: Samples
    test: Samples

    def decoded(self, workers: int = 0) -> Splits:
        """The same splits with every row decoded into RAM (the memory loader of data read on
        demand), each split once, read by `workers` processes."""
        done: dict[int, Samples] = {}

        def ram(s: Samples) -> Samples:
            if id(s) not in done:
                done[id(s)] = ArraySamples(s.materialize(workers), s.labels)
            return done[id(s)]

        return Splits(ram(self.teacher_train), ram(self.train), self.student_labels, ram(self.val), ram(self.test))

    def counts(self) -> dict[str, int]:
        labelled = int((self.student_labels != UNLABELLED).sum())
        return {"train": len(self.teacher_train), "labelled": labelled,
                "unlabelled": len(self.student_labels) - labelled, "val": len(self.val),
                "test": len(self.test)}


def stratified(idx: np.ndarray, y: np.ndarray, fraction: float | int, seed: int):
    """Split `idx` into (rest, part) with `fraction` of it (or, an int, that many) in part,
    stratified by y[idx]."""
    from sklearn.model_selection import train_test_split  # 1-4 s to import: only when splitting

    try:
        return train_test_split(idx, test_size=fraction, stratify=y[idx], random_state=seed)
    except ValueError as e:
        counts = np.bincount(y[idx][y[idx] >= 0]) if len(idx) else np.zeros(0, int)
        rare = np.flatnonzero((counts > 0) & (counts < 2))
        if len(rare):  # sklearn would list every such class (thousands when each text is its own label)
            raise DistillError(
                f"Cannot make a stratified split of {len(idx)} samples into {len(np.flatnonzero(counts))} "
                f"classes: {len(rare)} class(es) have a single sample (e.g. {', '.join(map(str, rare[:5]))}), and "
                "each needs at least 2. Check the label column (is it the labels?), or add samples."
            ) from None
        raise DistillError(
            f"Cannot make a stratified split of {len(idx)} samples with fraction {fraction}: {e}. "
            "Use more data or a larger fraction."
        ) from None


def student_labels(y_train: np.ndarray, fraction: float, num_classes: int, seed: int) -> np.ndarray:
    y_student = np.full_like(y_train, UNLABELLED)
    n_keep = max(int(round(fraction * len(y_train))), num_classes)
    if fraction >= 1.0 or n_keep >= len(y_train):
        return y_train.copy()
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(
        np.arange(len(y_train)), train_size=n_keep, stratify=y_train, random_state=seed
    )
    y_student[keep] = y_train[keep]
    return y_student


def _capped(val: Samples, limit: int | None, seed: int) -> Samples:
    """At most `limit` validation samples, a fixed stratified subset (data.val_max)."""
    if limit is None or len(val) <= limit:
        return val
    classes = len(np.unique(val.labels))
    if limit < classes or len(val) - limit < classes:  # too few to stratify: a seeded subset
        keep = np.random.default_rng(seed).permutation(len(val))[:limit]
        return val.subset(np.sort(keep))
    keep, _ = stratified(np.arange(len(val)), val.labels, len(val) - limit, seed)  # a count: exactly `limit` kept
    return val.subset(np.sort(keep))


def make_splits(source: Source, cfg, num_classes: int, extra: Samples | None = None) -> Splits:
    """The run's splits of `source` (a DataConfig `cfg`); `extra`: unlabelled inputs."""
    pool, seed = source.train, cfg.split_seed
    y = pool.labels
    labelled = np.flatnonzero(y != UNLABELLED)
    unlabelled = np.flatnonzero(y == UNLABELLED)
    test = source.test
    if test is None:
        labelled, test_idx = stratified(labelled, y, cfg.test_fraction, seed)
        test = pool.subset(test_idx)
    val = source.val
    if val is None:
        share = cfg.val_fraction if source.test is not None else cfg.val_fraction / (1 - cfg.test_fraction)
        labelled, val_idx = stratified(labelled, y, share, seed)
        val = pool.subset(val_idx)
    for name, split in (("validation", val), ("test", test)):
        if (split.labels == UNLABELLED).any():
            raise DistillError(f"The {name} split has unlabelled samples (label -1); every sample "
                               "it is scored on needs a label. Give it labelled samples only.")
    teacher_train = pool.subset(labelled)
    y_student = student_labels(y[labelled], cfg.label_fraction, num_classes, seed)
    parts, labels = [teacher_train], [y_student]
    for rest in ([pool.subset(unlabelled)] if len(unlabelled) else []) + ([extra] if extra else []):
        parts.append(rest)
        labels.append(np.full(len(rest), UNLABELLED, dtype=np.int64))
    return Splits(teacher_train, concat(parts), np.concatenate(labels),
                  _capped(val, cfg.val_max, seed), test)
