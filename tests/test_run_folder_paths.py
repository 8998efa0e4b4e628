"""A run folder is self-contained: config.yaml holds absolute paths, and summary.json the data's
fingerprint, so eval/export/report work from any directory and notice changed data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distill.cli import main
from distill.config import absolute_paths, load_config


@pytest.fixture
def npz_run(tmp_path, monkeypatch):
    """A run on data/tiny.npz, started with a relative path from tmp_path."""
    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    x = rng.normal(size=(300, 12)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)
    np.savez(tmp_path / "data" / "tiny.npz", x=x, y=y)
    monkeypatch.chdir(tmp_path)
    args = ["run", "--out", "runs/r", "--quiet", "--no-report", "data.name=npz", "data.path=data/tiny.npz",
            "train.epochs=1", "teacher.model=mlp", "teacher.kwargs.hidden=[16]", "stages=[teacher,scratch]"]
    assert main(args) == 0
    return tmp_path


def test_config_yaml_holds_absolute_paths_and_summary_the_fingerprint(npz_run):
    cfg = load_config(npz_run / "runs/r/config.yaml")
    assert cfg.data.path == str(npz_run / "data" / "tiny.npz")
    summary = json.loads((npz_run / "runs/r/summary.json").read_text())
    assert len(summary["data"]["sha256"]) == 64


def test_eval_and_export_from_another_directory(npz_run, monkeypatch, capsys):
    elsewhere = npz_run / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run = str(npz_run / "runs/r")
    assert main(["eval", run]) == 0
    assert main(["export", run, "--format", "safetensors", "--stage", "scratch"]) == 0
    assert "differ from what the run trained on" not in capsys.readouterr().err


def test_changed_data_is_noticed(npz_run, capsys):
    data = np.load(npz_run / "data" / "tiny.npz")
    np.savez(npz_run / "data" / "tiny.npz", x=data["x"] + 1.0, y=data["y"])
    assert main(["eval", str(npz_run / "runs/r")]) == 0
    assert "differ from what the run trained on" in capsys.readouterr().err


def test_absolute_paths_leaves_names_alone(tmp_path):
    (tmp_path / "mlp").mkdir()  # a folder that shares a zoo model's name is not the model
    cfg = absolute_paths(load_config(overrides=["teacher.checkpoint=t.pt", "cache=disk", "cache.dir=c"]), tmp_path)
    assert cfg.teacher.checkpoint == str(tmp_path / "t.pt") and cfg.cache.dir == str(tmp_path / "c")
    assert cfg.teacher.model == "cnn" and cfg.student.model == "mlp" and cfg.data.path is None
    lm = absolute_paths(load_config(overrides=["task=language_model", "data.tokenizer=tok"]), tmp_path)
    assert lm.data.tokenizer == "tok"  # not a folder here: a name
    (tmp_path / "tok").mkdir()
    lm = absolute_paths(lm, tmp_path)
    assert lm.data.tokenizer == str(tmp_path / "tok")
