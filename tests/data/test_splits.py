"""Splits as row indices, data.val_max, the loader choice (data.loader) and the bounded
statistics passes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distill.contracts import UNLABELLED
from distill.data import TensorLoader, choose_loader, feature_stats, loader_budget
from distill.data.augment import channel_stats
from distill.data.samples import ArraySamples, Samples, concat
from distill.data.source import Source
from distill.data.splits import make_splits
from distill.data.stream import StreamLoader
from distill.errors import DistillError


def _cfg(**kw):
    base = dict(split_seed=0, test_fraction=0.2, val_fraction=0.15, label_fraction=1.0, val_max=None,
                loader="auto", memory_limit_mb=None)
    return SimpleNamespace(**{**base, **kw})


def _pool(n=400, classes=4, shape=(3, 4, 4)):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    return ArraySamples(x, np.arange(n) % classes)


def test_splits_partition_the_pool_without_copying():
    pool = _pool()
    s = make_splits(Source(pool), _cfg(), 4)
    rows = np.concatenate([s.teacher_train.rows, s.val.rows, s.test.rows])
    assert sorted(rows.tolist()) == list(range(len(pool)))  # every row once
    assert s.teacher_train.base is pool  # a view of the pool, not a copy
    assert np.array_equal(s.val.take(np.arange(3)), pool.x[s.val.rows[:3]])
    assert s.counts() == {"train": 260, "labelled": 260, "unlabelled": 0, "val": 60, "test": 80}


def test_val_max_takes_a_fixed_stratified_subset():
    pool = _pool()
    full = make_splits(Source(pool), _cfg(), 4).val
    capped = make_splits(Source(pool), _cfg(val_max=20), 4).val
    assert len(full) == 60 and len(capped) == 20
    assert set(capped.rows) <= set(full.rows)  # a subset of the validation split, nothing else
    assert np.bincount(capped.labels).tolist() == [5, 5, 5, 5]  # stratified
    again = make_splits(Source(pool), _cfg(val_max=20), 4).val
    assert np.array_equal(capped.rows, again.rows)  # fixed: the same every run


def test_samples_labelled_minus_one_join_the_transfer_set_only():
    pool = _pool()
    pool.labels[:40] = UNLABELLED
    s = make_splits(Source(pool), _cfg(), 4)
    assert (s.teacher_train.labels != UNLABELLED).all()  # the teacher trains on labels only
    assert (s.val.labels != UNLABELLED).all() and (s.test.labels != UNLABELLED).all()
    assert (s.student_labels == UNLABELLED).sum() == 40 and len(s.train) == len(s.teacher_train) + 40
    assert np.array_equal(s.train.take(np.arange(len(s.train) - 40, len(s.train))), pool.x[:40])


def test_a_given_split_with_unlabelled_samples_is_refused():
    pool, val = _pool(), _pool(40)
    val.labels[3] = UNLABELLED
    with pytest.raises(DistillError, match="validation split has unlabelled"):
        make_splits(Source(pool, val=val), _cfg(), 4)


class _Lazy(ArraySamples):
    """An on-disk source: the loader choice applies."""


def test_auto_streams_lazy_data_over_the_budget_and_memory_refuses_them():
    pool = _Lazy(np.zeros((3000, 3, 32, 32), np.uint8), np.arange(3000) % 3)  # 9 MiB decoded
    s = None  # decided before the data are split
    assert choose_loader(_cfg(memory_limit_mb=100), Source(pool, lazy=True), s)[0] == "memory"
    kind, why = choose_loader(_cfg(memory_limit_mb=4), Source(pool, lazy=True), s)
    assert kind == "stream" and "budget is 4.00 MiB" in why
    assert choose_loader(_cfg(memory_limit_mb=9), Source(pool, lazy=True), _Lazy(pool.x[:200], pool.labels[:200]))[0] == "stream"
    with pytest.raises(DistillError, match="data.loader=stream"):
        choose_loader(_cfg(loader="memory", memory_limit_mb=4), Source(pool, lazy=True), s)
    # data already decoded in RAM stay there unless streaming is asked for
    assert choose_loader(_cfg(memory_limit_mb=4), Source(pool), s)[0] == "memory"
    assert choose_loader(_cfg(loader="stream"), Source(pool), s)[0] == "stream"
    assert loader_budget(_cfg(memory_limit_mb=7)) == 7 << 20


class _Counting(Samples):
    """Rows generated on demand; counts the rows read."""

    def __init__(self, n):
        self.labels, self.sample_shape, self.dtype, self.read = np.arange(n) % 2, (2, 3, 5), np.dtype(np.uint8), 0

    def take_rows(self, idx):
        self.read += len(idx)
        return (idx[:, None, None, None] * np.arange(30).reshape(2, 3, 5) % 251).astype(np.uint8)


def test_statistics_read_the_rows_in_bounded_chunks_and_equal_the_in_memory_numbers():
    lazy = _Counting(1000)
    x = lazy.take(np.arange(1000))
    lazy.read = 0
    assert channel_stats(lazy, scale=1 / 255, chunk=64) == channel_stats(x, scale=1 / 255, chunk=64)
    assert lazy.read == 1000  # one pass
    f = x.reshape(1000, -1).astype(np.float32)
    mean, std = feature_stats(ArraySamples(f, lazy.labels), rows=100)
    assert np.allclose(mean, f.mean(0, dtype=np.float64), rtol=1e-6)
    assert np.allclose(std, np.where(f.std(0) == 0, 1, f.std(0, dtype=np.float64)), rtol=1e-5)


def test_the_stream_loader_skips_unread_batches_on_resume():
    lazy = _Counting(100)
    loader = StreamLoader(lazy, 10, shuffle=True, seed=1)
    memory = TensorLoader(torch.from_numpy(lazy.take(np.arange(100))), torch.from_numpy(lazy.labels), 10, True, 1)
    lazy.read = 0
    loader.set_epoch(2, 7)
    memory.set_epoch(2, 7)
    got, want = list(loader), list(memory)
    assert lazy.read == 30 and len(got) == len(want) == 3  # only batches 8-10 were read
    assert all(torch.equal(a.inputs, b.inputs) and torch.equal(a.index, b.index) for a, b in zip(got, want, strict=True))


def test_concat_reads_each_part_in_place():
    a, b = _pool(10), _pool(5)
    both = concat([a, b])
    assert np.array_equal(both.take([12, 0, 14]), np.stack([b.x[2], a.x[0], b.x[4]]))
