"""data.name=package.module:function: your own torch Dataset of (input, label) pairs (or a dict
of splits), labels read from its targets/labels attribute or in one pass, inputs read on
demand; every mistake a clear error; imported like model code paths, and refused in someone
else's run folder without --trust-code."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
import torch

from distill.cli import main
from distill.config import load_config
from distill.data import build_data
from distill.data.source import open_source
from distill.data.stream import StreamLoader
from distill.data.user_data import DatasetSamples
from distill.errors import ConfigError, DistillError
from distill.trust import code_paths

FAST = ["--quiet", "--no-report", "train.epochs=1", "teacher.model=mlp", "teacher.kwargs.hidden=[16]",
        "student.model=mlp", "student.kwargs.hidden=[16]", "data.batch_size=32"]
MAKE = "mypkg.data:make"

MODULE = '''
import os

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, TensorDataset

open(os.path.join(os.path.dirname(__file__), "IMPORTED"), "a").write("x")
CALLS = []


class Pairs(Dataset):
    """Items (x[i], y[i]); `targets` set only when asked."""

    def __init__(self, x, y, targets=False):
        self.x, self.y = x, y
        if targets:
            self.targets = list(y)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        CALLS.append(i)
        return self.x[i], self.y[i]


def make(root, n=None, targets=False, split=False):
    a = np.load(os.path.join(root, "data.npz"))
    x, y = a["x"][:n], a["y"][:n]
    if not split:
        return Pairs(x, y, targets)
    return {"train": Pairs(x[40:], y[40:]), "test": Pairs(torch.from_numpy(x[:40]), y[:40])}


def tensors(n=90, kind="float"):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    x = (torch.randint(0, 256, (n, 3, 4, 4), generator=g, dtype=torch.uint8) if kind == "image"
         else torch.randn(n, 6, generator=g, dtype=torch.float64) + y[:, None])
    return TensorDataset(x, y)


def custom(items):
    class Items(Dataset):
        def __len__(self):
            return len(items)

        def __getitem__(self, i):
            return items[i]
    return Items()


def bad_items(kind):
    rng = np.random.default_rng(0)
    good = [(rng.normal(size=4).astype(np.float32), i % 2) for i in range(20)]
    if kind == "not pairs":
        good[0] = (good[0][0],)
    elif kind == "float label":
        good[3] = (good[3][0], 1.5)
    elif kind == "negative label":
        good[3] = (good[3][0], -3)
    elif kind == "one-hot":
        good[0] = (good[0][0], np.eye(2)[1])
    elif kind == "shape":
        good[7] = (np.zeros(5, np.float32), 1)
    elif kind == "dtype":
        good[7] = (np.zeros(4, np.float64), 1)
    elif kind == "list input":
        good[0] = ([0.0] * 4, 0)
    elif kind == "not finite":
        good[9] = (np.full(4, np.nan, np.float32), 1)
    return custom(good)


class Stream(IterableDataset):
    def __iter__(self):
        return iter([])


def returns(what):
    return {"list": [(1, 2)], "iterable": Stream(), "empty": TensorDataset(torch.zeros(0, 2), torch.zeros(0)),
            "keys": {"train": tensors(), "validation": tensors()}, "no train": {"test": tensors()},
            "bad targets": Pairs(np.zeros((6, 2), np.float32), np.arange(6) % 2, targets=True)}[what]


def wrong_targets():
    ds = Pairs(np.zeros((6, 2), np.float32), np.arange(6) % 2, targets=True)
    ds.targets = ds.targets[::-1]
    return ds


not_a_function = 3
'''


@pytest.fixture
def mypkg(tmp_path, monkeypatch):
    """The package `mypkg` (mypkg/data.py: MODULE) in tmp_path/src, and data.npz in tmp_path/data."""
    pkg = tmp_path / "src" / "mypkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data.py").write_text(textwrap.dedent(MODULE))
    rng = np.random.default_rng(0)
    y = np.arange(240) % 4
    x = rng.normal(size=(240, 6)).astype(np.float32) + y[:, None]
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "data.npz", x=x, y=y)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    for name in ("mypkg", "mypkg.data"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield tmp_path
    for name in ("mypkg", "mypkg.data"):
        sys.modules.pop(name, None)


def _open(*overrides):
    return open_source(load_config(overrides=list(overrides)).data)


def test_labels_in_one_pass_and_inputs_on_demand(mypkg):
    source = _open(f"data.name={MAKE}", f"data.kwargs.root={mypkg / 'data'}")
    calls = sys.modules["mypkg.data"].CALLS
    assert source.lazy and isinstance(source.train, DatasetSamples) and len(calls) == 241  # item 0 twice
    assert source.train.sample_shape == (6,) and source.train.dtype == np.float32
    calls.clear()
    x = np.load(mypkg / "data" / "data.npz")["x"]  # float64: served as float32
    np.testing.assert_array_equal(source.train.take([5, 2]), x[[5, 2]].astype(np.float32))
    assert calls == [5, 2]


def test_a_targets_attribute_saves_the_pass(mypkg):
    source = _open(f"data.name={MAKE}", f"data.kwargs.root={mypkg / 'data'}", "data.kwargs.targets=true")
    assert sys.modules["mypkg.data"].CALLS == [0, 0]  # the shape, and the check against targets[0]
    assert source.train.labels.tolist() == (np.arange(240) % 4).tolist()
    with pytest.raises(DistillError, match="Item 0 .* has label 0 but its targets/labels attribute says 1"):
        _open("data.name=mypkg.data:wrong_targets")


def test_a_dict_of_splits(mypkg):
    source = _open(f"data.name={MAKE}", f"data.kwargs.root={mypkg / 'data'}", "data.kwargs.split=true")
    assert len(source.train) == 200 and len(source.test) == 40 and source.val is None
    data = build_data(load_config(overrides=[f"data.name={MAKE}", f"data.kwargs.root={mypkg / 'data'}",
                                             "data.kwargs.split=true"]).data)
    assert data.counts["test"] == 40 and data.counts["val"] > 0  # validation carved from train


def test_images_stay_uint8_and_float64_features_become_float32(mypkg):
    images = _open("data.name=mypkg.data:tensors", "data.kwargs.kind=image")
    assert images.train.dtype == np.uint8 and images.train.sample_shape == (3, 4, 4)
    features = _open("data.name=mypkg.data:tensors")
    assert features.train.dtype == np.float32 and features.train.take([0]).dtype == np.float32


def test_the_module_is_found_in_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "cwd_data.py").write_text("from torch.utils.data import TensorDataset\nimport torch\n"
                                          "def make():\n    return TensorDataset(torch.randn(30, 2), torch.arange(30) % 2)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "cwd_data", raising=False)
    assert len(_open("data.name=cwd_data:make").train) == 30


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["data.name=nopkg.nomod:make"], r"Could not import dataset function 'nopkg.nomod:make' \(No module named 'nopkg'\)"),
        (["data.name=mypkg.data:nothing"], "Could not import dataset function 'mypkg.data:nothing'.*has no attribute"),
        (["data.name=mypkg.data:not_a_function"], "is a int, not a function"),
        (["data.name=mypkg.data:a:b"], "is not a code path"),
        (["data.name=mypkg.data:make", "data.kwargs.rooot=x"], "data.kwargs .* do not fit mypkg.data:make"),
        (["data.name=mypkg.data:make", "data.kwargs.root=/nowhere"], "Could not build the dataset .*FileNotFoundError"),
        (["data.name=mypkg.data:returns", "data.kwargs.what=list"], "returned a list; it must return a map-style"),
        (["data.name=mypkg.data:returns", "data.kwargs.what=iterable"], "returned an IterableDataset"),
        (["data.name=mypkg.data:returns", "data.kwargs.what=empty"], "The dataset is empty"),
        (["data.name=mypkg.data:returns", "data.kwargs.what=keys"], r"keys \['train', 'validation'\]; a dict of splits has 'train'"),
        (["data.name=mypkg.data:returns", "data.kwargs.what=no train"], r"keys \['test'\]"),
        (["data.name=mypkg.data:bad_items", "data.kwargs.kind=not pairs"], r"Item 0 of .* is a 1-item tuple, not an \(input, label\) pair"),
        (["data.name=mypkg.data:bad_items", "data.kwargs.kind=float label"], "must be integer class indices; found 1.5 at position 3"),
        (["data.name=mypkg.data:bad_items", "data.kwargs.kind=negative label"], "label -3 at position 3"),
        (["data.name=mypkg.data:bad_items", "data.kwargs.kind=one-hot"], "Item 0 .* has label .*not a one-hot vector"),
        (["data.name=mypkg.data:bad_items", "data.kwargs.kind=list input"], "The input of item 0 .* is a list, not a tensor"),
    ],
    ids=["module not found", "function missing", "not callable", "malformed", "kwargs", "function fails",
         "not a Dataset", "iterable", "empty", "unknown keys", "no train", "not pairs", "float label",
         "negative label", "one-hot", "list input"],
)
def test_mistakes_are_clear(mypkg, overrides, words):
    with pytest.raises(DistillError, match=words) as e:
        _open(*overrides)
    assert len(str(e.value)) < 700 and "Traceback" not in str(e.value)


@pytest.mark.parametrize(("kind", "words"), [
    ("shape", r"Item 7 of .* has an input of shape \(5,\) and dtype float32, but item 0's is \(4,\), float32"),
    ("dtype", "Item 7 .* dtype float64, but item 0's is .*float32"),
    ("not finite", "sample 9 holds a non-finite value"),
])
def test_bad_inputs_are_named_by_index_even_from_a_worker(mypkg, kind, words):
    source = _open("data.name=mypkg.data:bad_items", f"data.kwargs.kind={kind}")
    with pytest.raises(DistillError, match=words):
        source.train.take(np.arange(20))
    with pytest.raises(DistillError, match=words) as e:
        for _ in StreamLoader(source.train, 20, workers=2, persistent=False):
            pass
    assert "Traceback" not in str(e.value)


def test_keys_for_other_sources_are_refused():
    with pytest.raises(ConfigError, match="data.kwargs=.* would be ignored: only a data.name=package.module:function"):
        load_config(overrides=["data.name=npz", "data.path=x.npz", "data.kwargs.root=x"])
    with pytest.raises(ConfigError, match="data.path='x' would be ignored: data.name=mypkg.data:make is your function"):
        load_config(overrides=[f"data.name={MAKE}", "data.path=x"])
    with pytest.raises(ConfigError, match="data.size"):
        load_config(overrides=[f"data.name={MAKE}", "data.size=8"])


def test_cli_run_streams_a_user_dataset_and_its_folder_needs_trust(mypkg, capsys):
    out = mypkg / "run"
    code = main(["run", "--out", str(out), *FAST, f"data.name={MAKE}", f"data.kwargs.root={mypkg / 'data'}",
                 "data.loader=stream", "data.workers=0"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["loader"] == "stream" and summary["data"]["num_classes"] == 4
    cfg = load_config(out / "config.yaml")
    assert code_paths(cfg) == [f"data.name={MAKE}"]
    marker = mypkg / "src" / "mypkg" / "IMPORTED"
    marker.unlink()
    for name in ("mypkg", "mypkg.data"):
        sys.modules.pop(name, None)
    assert main(["eval", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"data.name={MAKE}" in err and "--trust-code" in err and not marker.exists()
    assert main(["eval", str(out), "--trust-code"]) == 0, capsys.readouterr().err
    assert marker.exists()


def test_python_api_runs_a_user_dataset_and_the_memory_loader_trains_the_same_student(mypkg):
    from safetensors.torch import load_file

    import distill

    overrides = [o for o in FAST if not o.startswith("--")] + [
        f"data.name={MAKE}", f"data.kwargs.root={mypkg / 'data'}", "stages=[teacher,distill]"]
    weights = {}
    for loader in ("stream", "memory"):
        cfg = distill.load_config(overrides=[*overrides, f"data.loader={loader}", "data.workers=0"])
        summary = distill.run(cfg, mypkg / loader, quiet=True)
        assert summary["data"]["loader"] == loader
        weights[loader] = load_file(mypkg / loader / "distill.safetensors")
    assert weights["stream"].keys() == weights["memory"].keys()
    assert all(torch.equal(weights["stream"][k], weights["memory"][k]) for k in weights["stream"])
