"""`distill run` end to end on a tiny config: exit codes, run folder, summary, errors."""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
from datetime import datetime

import pytest
import torch
import yaml

from distill.cli import main
from distill.config import load_config
from distill.data import build_data
from distill.engine import evaluate
from distill.io import load_weights
from distill.models import count_parameters, create_model
from distill.run_folder import MARKER, claim

TINY = ["train.epochs=2", "teacher.model=mlp", "teacher.kwargs.hidden=[32]", "data.batch_size=128"]
STAGES = ("teacher", "scratch", "distill")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    rc = main(["run", "--out", str(out), "--quiet", *TINY])
    summary = json.loads((out / "summary.json").read_text()) if rc == 0 else None
    return rc, out, summary


def test_tiny_run_succeeds_and_writes_the_run_folder(tiny_run):
    rc, out, _ = tiny_run
    assert rc == 0
    for name in ("config.yaml", "metrics.jsonl", "summary.json"):
        assert (out / name).is_file(), name
    for stage in STAGES:
        assert (out / f"{stage}.safetensors").is_file()
        assert (out / f"{stage}-last.safetensors").is_file()
    assert not list(out.glob(".*.tmp"))  # no leftovers of the atomic writes


def test_config_yaml_is_the_resolved_config(tiny_run):
    _, out, _ = tiny_run
    assert load_config(out / "config.yaml") == load_config(overrides=TINY)


def test_metrics_jsonl(tiny_run):
    _, out, _ = tiny_run
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in lines] == [(s, e) for s in STAGES for e in (1, 2)]
    for r in lines:
        for key in ("lr", "seconds", "train_loss", "train_ce", "val_acc"):
            assert isinstance(r[key], float) and math.isfinite(r[key]), key
        assert 0 <= r["val_acc"] <= 100
        # cosine over 2 epochs from lr 1e-3: 1e-3 at epoch 1, 1e-3 * (1 + cos(pi/2)) / 2 at epoch 2
        assert r["lr"] == pytest.approx(1e-3 if r["epoch"] == 1 else 0.5e-3)
        assert ("train_kd" in r) == (r["stage"] == "distill")
    for r in lines:
        if r["stage"] == "distill":
            assert math.isfinite(r["train_kd"])
            # default weights: 0.1 * ce + 0.9 * kd; epoch means are linear in the step values
            assert r["train_loss"] == pytest.approx(0.1 * r["train_ce"] + 0.9 * r["train_kd"], rel=1e-4)
        else:
            assert r["train_loss"] == pytest.approx(r["train_ce"], rel=1e-6)


def test_summary_schema(tiny_run):
    _, _, s = tiny_run
    assert set(s) >= {"schema", "name", "seed", "finished", "device", "data", "stages", "gain",
                      "environment", "wall_seconds"}
    assert s["schema"] == 1
    assert s["name"] == "digits-transfer" and s["seed"] == 0
    assert s["device"] == "cpu"
    datetime.fromisoformat(s["finished"])

    d = s["data"]
    assert set(d) >= {"name", "num_classes", "train", "labelled", "unlabelled", "val", "test"}
    assert d["name"] == "digits" and d["num_classes"] == 10
    assert d["train"] + d["val"] + d["test"] == 1797
    assert d["labelled"] + d["unlabelled"] == d["train"]

    assert set(s["stages"]) == set(STAGES)
    for stage in STAGES:
        r = s["stages"][stage]
        assert set(r) >= {"params", "best_epoch", "val_acc", "test_acc", "last_val_acc",
                          "last_test_acc", "seconds"}
        assert r["best_epoch"] in (1, 2)
        for key in ("val_acc", "test_acc", "last_val_acc", "last_test_acc"):
            assert 0 <= r[key] <= 100
        assert r["seconds"] > 0
        assert r["val_acc"] >= r["last_val_acc"]  # best is selected on validation

    assert set(s["gain"]) == {"test_acc", "val_acc", "last_test_acc"}
    for key, value in s["gain"].items():
        assert value == pytest.approx(s["stages"]["distill"][key] - s["stages"]["scratch"][key])

    env = s["environment"]
    assert env["torch"] == torch.__version__
    assert env["python"] == platform.python_version()
    assert s["wall_seconds"] >= sum(s["stages"][k]["seconds"] for k in STAGES)


def test_summary_params_and_best_epoch_match_the_models_and_metrics(tiny_run):
    _, out, s = tiny_run
    cfg = load_config(out / "config.yaml")
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for stage in STAGES:
        role = cfg.teacher if stage == "teacher" else cfg.student
        model = create_model(role.model, 10, (1, 8, 8), **role.kwargs)
        assert s["stages"][stage]["params"] == count_parameters(model)
        val = [r["val_acc"] for r in lines if r["stage"] == stage]
        assert s["stages"][stage]["val_acc"] == max(val)
        assert s["stages"][stage]["last_val_acc"] == val[-1]


def test_saved_weights_reproduce_the_reported_accuracies(tiny_run):
    _, out, s = tiny_run
    cfg = load_config(out / "config.yaml")
    data = build_data(cfg.data)
    for stage in STAGES:
        role = cfg.teacher if stage == "teacher" else cfg.student
        for suffix, key in (("", "test_acc"), ("-last", "last_test_acc")):
            model = create_model(role.model, data.num_classes, data.in_shape, **role.kwargs)
            load_weights(model, out / f"{stage}{suffix}.safetensors")
            acc = evaluate(model, data.test, "cpu")["acc"]
            assert acc == pytest.approx(s["stages"][stage][key], abs=1e-9), (stage, suffix)


def test_refuses_a_folder_with_a_finished_run(tiny_run, capsys):
    _, out, _ = tiny_run
    before = (out / "summary.json").read_bytes()
    metrics = (out / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["run", "--out", str(out), "--quiet", *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
    assert (out / "summary.json").read_bytes() == before
    assert (out / "metrics.jsonl").read_bytes() == metrics


def test_refuses_without_touching_anything(tmp_path, capsys):
    claim(tmp_path, "run", "--out")  # distill's folder (a folder of the user's is refused before)
    (tmp_path / "summary.json").write_text('{"sentinel": 1}\n')
    assert main(["run", "--out", str(tmp_path), "--quiet", "train.epochs=1"]) == 2
    assert (tmp_path / "summary.json").read_text() == '{"sentinel": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == [MARKER, "summary.json"]
    assert "already holds a finished run" in capsys.readouterr().err


def test_print_config_round_trips(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = ["train.epochs=7", "loss.kd.T=2", "student.model=cnn", "seed=4"]
    assert main(["run", "--print-config", *overrides]) == 0
    text = capsys.readouterr().out
    assert yaml.safe_load(text)["train"]["epochs"] == 7
    path = tmp_path / "printed.yaml"
    path.write_text(text)
    assert load_config(path) == load_config(overrides=overrides)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["printed.yaml"]  # no run folder made


def test_print_config_with_a_config_file_and_overrides(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("name: from-file\ntrain:\n  epochs: 3\n")
    assert main(["run", str(path), "train.lr=0.01", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["name"] == "from-file"
    assert cfg["train"]["epochs"] == 3 and cfg["train"]["lr"] == 0.01


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train.epoch=5"], "epochs"),
        (["train.epochs=abc"], "train.epochs"),
        (["loss.kd.T=0"], "T must be > 0"),
        (["loss.kdd.weight=1"], "Did you mean 'kd'?"),
        (["train.optimizer=adamm"], "train.optimizer"),
        (["missing-config.yaml"], "does not exist"),
        (["loss.ce.weight=0", "loss.kd.weight=0"], "zero"),
    ],
)
def test_config_errors_exit_2_with_one_paragraph(args, needle, capsys):
    assert main(["run", "--print-config", *args]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("error:")
    assert needle in err
    assert "Traceback" not in err and "Traceback" not in captured.out
    assert "\n\n" not in err.strip()  # one paragraph
    assert captured.out == ""


def test_run_time_user_error_exits_2(tmp_path, capsys):
    out = tmp_path / "bad-model"
    assert main(["run", "--out", str(out), "--quiet", "teacher.model=mlpp", "train.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
    assert "mlp" in err
    assert not (out / "summary.json").exists()


def test_python_dash_m_distill_print_config():
    proc = subprocess.run(
        [sys.executable, "-m", "distill", "run", "--print-config", "train.epochs=3"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["train"]["epochs"] == 3
    assert cfg["loss"] == {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "T": 4.0}}
