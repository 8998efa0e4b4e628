"""build_data on digits (splits, transfer-set labels, standardization, extra unlabelled rows)
and the in-memory TensorLoader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.config import DataConfig
from distill.data import build_data
from distill.data.digits import load_digits_arrays
from distill.data.loader import TensorLoader
from distill.errors import DistillError

N_DIGITS, CLASSES = 1797, 10


@pytest.fixture(scope="module")
def digits():
    return build_data(DataConfig())


@pytest.fixture(scope="module")
def raw():
    return load_digits_arrays()


def labels(loader) -> np.ndarray:
    return loader.y.numpy()


def test_split_sizes_sum_to_the_dataset(digits):
    c = digits.counts
    assert c["train"] + c["val"] + c["test"] == N_DIGITS
    assert len(digits.teacher_train.x) == c["train"]
    assert len(digits.train.x) == c["train"]  # no extra unlabelled data by default
    assert len(digits.val.x) == c["val"] and len(digits.test.x) == c["test"]
    assert c["test"] == pytest.approx(0.2 * N_DIGITS, abs=1)
    assert c["val"] == pytest.approx(0.15 * N_DIGITS, abs=1)
    assert digits.num_classes == CLASSES
    assert digits.in_shape == (1, 8, 8)


def test_splits_are_stratified(digits, raw):
    _, y_all = raw
    overall = np.bincount(y_all, minlength=CLASSES)
    for loader, fraction in ((digits.val, 0.15), (digits.test, 0.2), (digits.teacher_train, 0.65)):
        counts = np.bincount(labels(loader), minlength=CLASSES)
        assert (counts > 0).all()
        # each class keeps its share of the split, to within a couple of samples
        assert np.abs(counts - fraction * overall).max() <= 2


def test_label_fraction_keeps_a_stratified_tenth(digits):
    y = labels(digits.train)
    labelled = y[y != -1]
    n_train = digits.counts["train"]
    assert digits.counts["labelled"] == len(labelled) == round(0.1 * n_train)
    assert digits.counts["unlabelled"] == n_train - len(labelled)
    per_class = np.bincount(labelled, minlength=CLASSES)
    assert (per_class > 0).all()
    full = np.bincount(labels(digits.teacher_train), minlength=CLASSES)
    assert np.abs(per_class - 0.1 * full).max() <= 1.5


def test_kept_labels_are_the_true_ones(digits):
    y_student, y_teacher = labels(digits.train), labels(digits.teacher_train)
    kept = y_student != -1
    assert np.array_equal(y_student[kept], y_teacher[kept])
    assert torch.equal(digits.train.x, digits.teacher_train.x)


def test_val_and_test_labels_are_never_unlabelled(digits):
    assert (labels(digits.val) >= 0).all()
    assert (labels(digits.test) >= 0).all()


def test_teacher_train_has_every_label(digits):
    y = labels(digits.teacher_train)
    assert (y >= 0).all() and (y < CLASSES).all()


def test_label_fraction_one_labels_everything():
    data = build_data(DataConfig(label_fraction=1.0))
    assert (labels(data.train) >= 0).all()
    assert data.counts["unlabelled"] == 0


def test_tiny_label_fraction_keeps_one_per_class():
    data = build_data(DataConfig(label_fraction=0.001))
    y = labels(data.train)
    assert np.array_equal(np.bincount(y[y != -1], minlength=CLASSES), np.ones(CLASSES))


def test_standardized_with_training_statistics(digits):
    x = digits.teacher_train.x.reshape(len(digits.teacher_train.x), -1)
    assert x.mean(0).abs().max().item() < 1e-4
    std = x.std(0, unbiased=False)
    varying = std > 0
    assert (std[varying] - 1).abs().max().item() < 1e-4
    # val and test are not standardized on their own statistics
    xv = digits.val.x.reshape(len(digits.val.x), -1)
    assert xv.mean(0).abs().max().item() > 1e-3


def test_same_transform_everywhere_and_unlabelled_rows_added(tmp_path, raw):
    """Feed the whole raw dataset back as extra unlabelled rows: every split's rows must be
    exactly those rows standardized with the mean/std of the training rows."""
    x_all, _ = raw
    path = tmp_path / "extra.npz"
    np.savez(path, x=x_all)
    data = build_data(DataConfig(unlabelled_path=str(path)))
    n_train = data.counts["train"]

    assert data.counts["unlabelled"] == n_train - data.counts["labelled"] + N_DIGITS
    assert len(data.train.x) == n_train + N_DIGITS
    assert (labels(data.train)[n_train:] == -1).all()
    assert len(data.teacher_train.x) == n_train  # the teacher never sees the extra rows

    extra = data.train.x[n_train:].reshape(N_DIGITS, -1).numpy()
    flat = x_all.reshape(N_DIGITS, -1)
    row_of = {row.tobytes(): i for i, row in enumerate(extra)}
    train_rows = [row_of[r.tobytes()] for r in data.teacher_train.x.reshape(n_train, -1).numpy()]
    mean, std = flat[train_rows].mean(0), flat[train_rows].std(0)
    std[std == 0] = 1.0
    np.testing.assert_allclose(extra, (flat - mean) / std, rtol=1e-5, atol=1e-5)
    for split in (data.val, data.test):
        assert all(r.tobytes() in row_of for r in split.x.reshape(len(split.x), -1).numpy())


def test_unlabelled_wrong_shape(tmp_path):
    path = tmp_path / "flat.npz"
    np.savez(path, x=np.zeros((5, 64), dtype=np.float32))
    with pytest.raises(DistillError, match="shape"):
        build_data(DataConfig(unlabelled_path=str(path)))


def test_unlabelled_missing_file_or_array(tmp_path):
    with pytest.raises(DistillError, match="does not exist"):
        build_data(DataConfig(unlabelled_path=str(tmp_path / "nope.npz")))
    path = tmp_path / "other.npz"
    np.savez(path, images=np.zeros((5, 1, 8, 8), dtype=np.float32))
    with pytest.raises(DistillError, match="'x'"):
        build_data(DataConfig(unlabelled_path=str(path)))


def test_unknown_dataset():
    with pytest.raises(DistillError, match="digits"):
        build_data(DataConfig(name="mnist-typo"))


def test_split_is_independent_of_the_run_seed():
    a, b = build_data(DataConfig(), seed=0), build_data(DataConfig(), seed=1)
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.train.y, b.train.y)
    assert a.train.seed != b.train.seed


# ---------------------------------------------------------------- TensorLoader


def _loader(n=50, batch_size=8, seed=3, **kw):
    x = torch.arange(n, dtype=torch.float32)[:, None] * 10
    y = torch.arange(n) % 7
    return TensorLoader(x, y, batch_size, seed=seed, **kw)


def _epoch_order(loader, epoch):
    loader.set_epoch(epoch)
    return torch.cat([b.index for b in loader]).tolist()


def test_batches_are_x_y_index():
    loader = _loader(shuffle=True)
    batches = list(loader)
    assert len(batches) == len(loader) == 7  # ceil(50 / 8)
    for b in batches:
        assert torch.equal(b.inputs[:, 0], b.index.float() * 10)
        assert torch.equal(b.targets, b.index % 7)
    assert [len(b.index) for b in batches] == [8] * 6 + [2]


def test_each_index_once_per_epoch():
    loader = _loader(shuffle=True)
    for epoch in range(3):
        assert sorted(_epoch_order(loader, epoch)) == list(range(50))


def test_same_order_for_same_seed_and_epoch():
    a, b = _loader(shuffle=True, seed=3), _loader(shuffle=True, seed=3)
    assert _epoch_order(a, 4) == _epoch_order(b, 4)
    assert _epoch_order(a, 0) == _epoch_order(a, 0)  # and again after other epochs


def test_order_differs_across_epochs_and_seeds():
    loader = _loader(shuffle=True)
    orders = [_epoch_order(loader, e) for e in range(3)]
    assert orders[0] != orders[1] != orders[2] and orders[0] != orders[2]
    assert orders[0] != list(range(50))
    assert _epoch_order(_loader(shuffle=True, seed=4), 0) != orders[0]


def test_iterating_again_without_set_epoch_moves_on():
    loader = _loader(shuffle=True)
    first = torch.cat([b.index for b in loader]).tolist()
    second = torch.cat([b.index for b in loader]).tolist()
    assert first != second
    assert first == _epoch_order(_loader(shuffle=True), 0)
    assert second == _epoch_order(_loader(shuffle=True), 1)


def test_no_shuffle_is_in_order_and_drop_last():
    assert _epoch_order(_loader(shuffle=False), 5) == list(range(50))
    loader = _loader(shuffle=False, drop_last=True)
    assert len(loader) == 6
    assert torch.cat([b.index for b in loader]).tolist() == list(range(48))


def test_length_mismatch():
    with pytest.raises(ValueError):
        TensorLoader(torch.zeros(3, 2), torch.zeros(4), 2)
