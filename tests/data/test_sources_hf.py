"""data.name=hf: Hugging Face datasets from local files only (parquet, arrow, csv, jsonl, an
image folder, a save_to_disk folder), their splits mapped to train/val/test, images decoded per
row to RGB uint8 C x H x W, numeric columns served as float32 features; clear errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from distill.cli import main
from distill.config import load_config
from distill.data import build_data
from distill.data.source import open_source
from distill.errors import ConfigError, DistillError

datasets = pytest.importorskip("datasets")
from PIL import Image  # noqa: E402

FAST = ["--quiet", "--no-report", "train.epochs=1", "teacher.model=mlp", "teacher.kwargs.hidden=[16]",
        "student.model=mlp", "student.kwargs.hidden=[16]", "data.batch_size=32"]


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    """The datasets library's Arrow cache in tmp_path, not the home folder."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def _table(n=120, f=5, seed=0, labels=None):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.normal(size=(n, f)) + y[:, None]
    return datasets.Dataset.from_dict({"x": x.tolist(), "label": (y if labels is None else labels).tolist()})


def _images(root, splits=("train", "test"), per_class=10, hw=(6, 8)):
    rng = np.random.default_rng(0)
    for split in splits:
        for c, name in enumerate(("cat", "dog")):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                a = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
                a[..., 1] = 120 * c
                Image.fromarray(a).save(root / split / name / f"{i}.png")
    return root


def _cfg(path, *extra):
    return load_config(overrides=["data.name=hf", f"data.path={path}", *extra]).data


def test_parquet_file_with_a_list_column(tmp_path):
    _table().to_parquet(str(tmp_path / "d.parquet"))
    source = open_source(_cfg(tmp_path / "d.parquet", "data.image_column=x"))
    assert source.lazy and source.val is None and source.test is None
    assert source.train.sample_shape == (5,) and source.train.dtype == np.float32
    want = np.asarray(_table()["x"], dtype=np.float32)
    np.testing.assert_array_equal(source.train.take([7, 3]), want[[7, 3]])
    assert source.train.labels.tolist() == (np.arange(120) % 3).tolist()


@pytest.mark.parametrize("fmt", ["parquet", "csv_strings", "jsonl", "arrow_saved", "save_to_disk"])
def test_formats_and_split_names(tmp_path, fmt):
    root = tmp_path / "d"
    root.mkdir()
    train, test = _table(), _table(40, seed=1)
    if fmt == "parquet":
        train.to_parquet(str(root / "train.parquet"))
        test.to_parquet(str(root / "test.parquet"))
    elif fmt == "csv_strings":  # csv holds no lists: one numeric column per row, string labels
        for name, ds in (("train", train), ("validation", test)):
            ds = ds.map(lambda r: {"f": r["x"][0], "label": ["ant", "bee", "cow"][r["label"]]}, remove_columns=["x"])
            ds.to_csv(str(root / f"{name}.csv"), index=False)
    elif fmt == "jsonl":
        train.to_json(str(root / "train.jsonl"))
        test.to_json(str(root / "test.jsonl"))
    else:
        saved = datasets.DatasetDict({"train": train, "test": test})
        saved.save_to_disk(str(root / "saved"))
        root = root / "saved"
        if fmt == "arrow_saved":  # the .arrow files themselves, without the save_to_disk metadata
            for split in ("train", "test"):
                (root.parent / "arrow" / split).mkdir(parents=True)
                for f in (root / split).glob("*.arrow"):
                    f.rename(root.parent / "arrow" / split / f.name)
            root = root.parent / "arrow"
    column = "f" if fmt == "csv_strings" else "x"
    if fmt == "csv_strings":
        with pytest.raises(DistillError, match="shape \\(\\) per sample"):  # a scalar column is no input row
            open_source(_cfg(root, f"data.image_column={column}"))
        return
    source = open_source(_cfg(root, f"data.image_column={column}"))
    assert len(source.train) == 120 and len(source.test) == 40 and source.train.sample_shape == (5,)


def test_files_without_split_names_are_all_training_data(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    _table(60).to_parquet(str(root / "part-a.parquet"))
    _table(50, seed=1).to_parquet(str(root / "part-b.parquet"))
    (root / "README.md").write_text("not data")
    source = open_source(_cfg(root, "data.image_column=x"))
    assert len(source.train) == 110 and source.val is None and source.test is None


def test_string_labels_and_validation_split(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    names = np.array(["bee", "ant", "cow"])
    _table(labels=names[np.arange(120) % 3]).to_parquet(str(root / "train.parquet"))
    _table(30, labels=names[np.arange(30) % 3]).to_parquet(str(root / "validation.parquet"))
    source = open_source(_cfg(root, "data.image_column=x"))
    assert source.class_names == ["ant", "bee", "cow"] and len(source.val) == 30 and source.test is None
    assert source.train.labels[:3].tolist() == [1, 0, 2]


def test_image_folder_decoded_per_row(tmp_path):
    root = _images(tmp_path / "imgs")
    source = open_source(_cfg(root))
    assert source.class_names == ["cat", "dog"] and len(source.test) == 20
    assert source.train.sample_shape == (3, 6, 8) and source.train.dtype == np.uint8
    rows = source.train.take([0, 15])
    assert rows.shape == (2, 3, 6, 8) and (rows[:, 1] == np.array([0, 120])[:, None, None]).all()
    resized = open_source(_cfg(root, "data.size=[10, 12]", "data.crop=4"))
    assert resized.train.take([1]).shape == (1, 3, 4, 4)


def test_images_of_different_sizes_need_data_size(tmp_path):
    root = _images(tmp_path / "imgs", splits=("train",))
    Image.new("RGB", (5, 5)).save(root / "train" / "cat" / "odd.png")
    source = open_source(_cfg(root))
    with pytest.raises(DistillError, match=r"Row \d+ of the train split .* set data.size and/or data.crop"):
        source.train.take(np.arange(len(source.train)))
    assert open_source(_cfg(root, "data.size=[4, 4]")).train.take(np.arange(21)).shape == (21, 3, 4, 4)


def test_workers_read_the_rows_and_a_damaged_image_is_named(tmp_path):
    from distill.data.stream import StreamLoader

    root = _images(tmp_path / "imgs", splits=("train",))
    source = open_source(_cfg(root))
    got = torch.cat([b.inputs for b in StreamLoader(source.train, 6, workers=2, persistent=False)])
    assert torch.equal(got, torch.from_numpy(source.train.take(np.arange(20))))
    (root / "train" / "dog" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n damaged")
    source = open_source(_cfg(root))
    with pytest.raises(DistillError, match=r"Could not read row 13 of the train split") as e:
        for _ in StreamLoader(source.train, 6, workers=2, persistent=False):
            pass
    assert "Traceback" not in str(e.value)


def test_memory_and_stream_loaders_give_the_same_images(tmp_path):
    root = _images(tmp_path / "imgs")
    memory = build_data(_cfg(root, "data.loader=memory", "data.batch_size=8"))
    stream = build_data(_cfg(root, "data.loader=stream", "data.workers=0", "data.batch_size=8"))
    for a, b in zip(memory.teacher_train, stream.teacher_train, strict=True):
        assert torch.equal(a.inputs, b.inputs)


@pytest.mark.parametrize(
    ("make", "extra", "words"),
    [
        (lambda r: r / "nowhere", [], "does not exist. data.name=hf reads local files only"),
        (lambda r: (_table().to_parquet(str(r / "d.parquet")), r / "d.parquet")[1], [],
         r"no column 'image' \(data.image_column\); its columns: x, label"),
        (lambda r: (_table().to_parquet(str(r / "d.parquet")), r / "d.parquet")[1], ["data.image_column=x", "data.label_column=y"],
         r"no column 'y' \(data.label_column\)"),
        (lambda r: ((r / "n.txt").write_text("x"), r / "n.txt")[1], [], "reads .parquet, .arrow"),
        (lambda r: (_table().to_parquet(str(r / "extra.parquet")), _table().to_parquet(str(r / "train.parquet")), r)[2],
         ["data.image_column=x"], r"extra.parquet' \(1 file\(s\) in all\) belongs to no split"),
        (lambda r: (datasets.DatasetDict({"train": _table(), "extra": _table()}).save_to_disk(str(r / "s")), r / "s")[1],
         ["data.image_column=x"], r"has the splits \['extra', 'train'\]"),
        (lambda r: (_table(labels=np.r_[np.arange(119) % 3, -4]).to_parquet(str(r / "d.parquet")), r / "d.parquet")[1],
         ["data.image_column=x"], "label -4"),
        (lambda r: (_table().to_parquet(str(r / "d.parquet")), r / "d.parquet")[1], ["data.image_column=x", "data.size=8"],
         "not an Image column"),
        (lambda r: ((r / "d.parquet").write_bytes(b"not parquet"), r / "d.parquet")[1], ["data.image_column=x"],
         "Could not read .* with the 'parquet' builder"),
    ],
    ids=["missing path", "no image column", "no label column", "unknown format", "file of no split", "unknown split",
         "bad label", "size on features", "corrupt file"],
)
def test_mistakes_are_clear(tmp_path, make, extra, words):
    with pytest.raises(DistillError, match=words) as e:
        open_source(_cfg(make(tmp_path), *extra))
    assert len(str(e.value)) < 700


def test_without_datasets_the_error_names_the_extra(tmp_path, monkeypatch):
    _table().to_parquet(str(tmp_path / "d.parquet"))
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(DistillError, match=r"pip install distill\[datasets\]"):
        open_source(_cfg(tmp_path / "d.parquet", "data.image_column=x"))


def test_hf_keys_are_refused_elsewhere():
    with pytest.raises(ConfigError, match="data.image_column='x' would be ignored: only data.name=hf"):
        load_config(overrides=["data.name=npz", "data.path=x.npz", "data.image_column=x"])
    load_config(overrides=["data.name=hf", "data.path=x", "data.label_column=y", "data.image_column=x", "data.size=8"])
    with pytest.raises(ConfigError, match="data.skip_corrupt"):
        load_config(overrides=["data.name=hf", "data.path=x", "data.skip_corrupt=true"])


def test_cli_run_streams_an_hf_image_folder(tmp_path, capsys):
    root = _images(tmp_path / "imgs", per_class=30)
    out = tmp_path / "run"
    code = main(["run", "--out", str(out), *FAST, "data.name=hf", f"data.path={root}",
                 "data.loader=stream", "data.workers=0"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["loader"] == "stream" and summary["data"]["test"] == 60
