"""data.name=npy: a folder of .npy arrays opened memory-mapped (headers read, rows on demand),
checked by dtype and shape without reading the values, with clear errors for every layout
mistake."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from distill.cli import main
from distill.config import load_config
from distill.data import build_data
from distill.data.npy import NpySamples
from distill.data.source import open_source
from distill.errors import DistillError

FAST = ["--quiet", "--no-report", "train.epochs=1", "teacher.model=mlp", "teacher.kwargs.hidden=[16]",
        "student.model=mlp", "student.kwargs.hidden=[16]", "data.batch_size=32"]


def _write(root, x, y, x_test=None, y_test=None):
    root.mkdir(parents=True, exist_ok=True)
    for name, a in (("x", x), ("y", y), ("x_test", x_test), ("y_test", y_test)):
        if a is not None:
            np.save(root / f"{name}.npy", a)
    return root


def _features(n=120, f=5, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    return (rng.normal(size=(n, f)) + y[:, None]).astype(np.float32), y


def _open(root, *extra):
    return open_source(load_config(overrides=["data.name=npy", f"data.path={root}", *extra]).data)


def test_opened_memory_mapped_with_a_test_split(tmp_path):
    x, y = _features()
    root = _write(tmp_path / "d", x, y, x[:30], y[:30])
    source = _open(root)
    assert source.lazy and isinstance(source.train, NpySamples)
    assert isinstance(source.train.x, np.memmap) and source.train.sample_shape == (5,)
    np.testing.assert_array_equal(source.train.take([3, 1]), x[[3, 1]])
    assert len(source.test) == 30 and source.val is None
    assert source.train.labels.dtype == np.int64 and source.train.labels.tolist() == y.tolist()


def test_images_stay_uint8_and_features_become_float32(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (40, 3, 4, 4), dtype=np.uint8)
    source = _open(_write(tmp_path / "i", imgs, np.arange(40) % 2))
    assert source.train.dtype == np.uint8 and source.train.take([0]).dtype == np.uint8
    source = _open(_write(tmp_path / "f", np.arange(80).reshape(40, 2).astype(np.int16), np.arange(40) % 2))
    assert source.train.dtype == np.float32 and source.train.take([1]).tolist() == [[2.0, 3.0]]


def test_the_fingerprint_reads_no_data(tmp_path, monkeypatch):
    x, y = _features()
    root = _write(tmp_path / "d", x, y)
    source = _open(root)
    monkeypatch.setattr(NpySamples, "take_rows", lambda *a: pytest.fail("rows were read"))
    first = source.train.fingerprint()
    assert _open(root).train.fingerprint() == first
    _write(root, x[:60], y[:60])
    assert _open(root).train.fingerprint() != first


def test_memory_and_stream_loaders_give_the_same_batches(tmp_path):
    x, y = _features()
    root = _write(tmp_path / "d", x, y)
    cfg = ["data.name=npy", f"data.path={root}", "data.batch_size=16"]
    memory = build_data(load_config(overrides=[*cfg, "data.loader=memory"]).data)
    stream = build_data(load_config(overrides=[*cfg, "data.loader=stream", "data.workers=0"]).data)
    for a, b in zip(memory.train, stream.train, strict=True):
        assert torch.equal(a.inputs, b.inputs)


def test_unlabelled_rows_join_the_transfer_set(tmp_path):
    x, y = _features()
    y = y.copy()
    y[:12] = -1
    data = build_data(load_config(overrides=["data.name=npy", f"data.path={_write(tmp_path / 'd', x, y)}"]).data)
    assert data.counts["unlabelled"] >= 12


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda r: None, "does not exist"),
        (lambda r: (r.mkdir(), np.save(r / "y.npy", np.zeros(3)))[0], "has no x.npy"),
        (lambda r: (r.mkdir(), np.save(r / "x.npy", np.zeros((3, 2))))[0], "has no y.npy"),
        (lambda r: _write(r, np.zeros((4, 2), np.float32), np.array([0, 1, 0])), "4 samples but .*y.npy' has 3"),
        (lambda r: _write(r, *_features(), x_test=np.zeros((3, 5), np.float32)), "has x_test.npy but not y_test.npy"),
        (lambda r: _write(r, np.array([{"a": 1}] * 4, dtype=object), np.array([0, 1, 0, 1])), "pickled array"),
        (lambda r: _write(r, np.zeros((4, 2), np.float32), np.array(["a", "b", "a", "b"])), "integer class"),
        (lambda r: _write(r, np.zeros((4, 2), np.float32), np.array([0, 1, -3, 1])), "label -3"),
        (lambda r: _write(r, np.zeros((4, 2), np.float32), np.array([0, 2, 0, 2])), "class\\(es\\) 1 never occur"),
        (lambda r: _write(r, np.zeros((0, 2), np.float32), np.zeros(0, np.int64)), "empty"),
        (lambda r: _write(r, np.zeros((4, 3, 2, 2), np.int16), np.array([0, 1, 0, 1])), "int16 images .*uint8"),
        (lambda r: _write(r, np.zeros((4, 8, 8, 3), np.uint8), np.array([0, 1, 0, 1])), "channels last"),
        (lambda r: _write(r, np.zeros(4, np.float32), np.array([0, 1, 0, 1])), "no features"),
        (lambda r: _write(r, np.array([["a", "b"]] * 4), np.array([0, 1, 0, 1])), "must be numbers"),
        (lambda r: _write(r, *_features(), np.zeros((3, 4), np.float32), np.zeros(3)), "test inputs must match"),
    ],
    ids=["missing folder", "no x", "no y", "length mismatch", "x_test alone", "object dtype", "string labels",
         "negative label", "unused class", "empty", "int16 images", "channels last", "1-d x", "strings",
         "test shape"],
)
def test_layout_errors_are_clear(tmp_path, make, words):
    root = tmp_path / "d"
    make(root)
    with pytest.raises(DistillError, match=words) as e:
        _open(root)
    assert len(str(e.value)) < 600


def test_a_file_that_is_no_npy_is_named(tmp_path):
    root = _write(tmp_path / "d", *_features())
    np.savez(root / "x.npy", x=np.zeros(3))  # np.savez appends .npz: write the archive by hand
    (root / "x.npy").write_bytes((root / "x.npy.npz").read_bytes())
    with pytest.raises(DistillError, match=r"x\.npy' is an \.npz archive"):
        _open(root)
    (root / "x.npy").write_bytes(b"garbage")
    with pytest.raises(DistillError, match="not a .npy file"):
        _open(root)


def test_nan_is_found_when_its_row_is_read(tmp_path):
    x, y = _features()
    x[77, 2] = np.nan
    source = _open(_write(tmp_path / "d", x, y))  # opening reads no values
    source.train.take(np.arange(70))
    with pytest.raises(DistillError, match="sample 77 holds a non-finite value"):
        source.train.take([5, 77])


def test_cli_run_streams_npy(tmp_path, capsys):
    x, y = _features(200)
    root = _write(tmp_path / "d", x, y, x[:40], y[:40])
    out = tmp_path / "run"
    code = main(["run", "--out", str(out), *FAST, "data.name=npy", f"data.path={root}",
                 "data.loader=stream", "data.workers=0"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["loader"] == "stream" and summary["data"]["test"] == 40
