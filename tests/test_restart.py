"""A diverged run can be retried in place: `--resume RUN train.lr=...` restarts the stages the
new schedule changes (and the ones that depend on them) and keeps the rest."""

from __future__ import annotations

import json

import pytest

from distill.cli import main
from distill.config import load_config
from distill.restart import stages_to_restart

TINY = ["train.epochs=1", "teacher.model=mlp", "teacher.kwargs.hidden=[16]", "data.batch_size=256",
        "--quiet", "--no-report"]


def test_a_diverged_teacher_is_retried_with_a_lower_lr(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *TINY, "teacher.train.lr=1e30"]) == 2
    err = capsys.readouterr().err
    assert "non-finite" in err and f"distill run --resume {out} train.lr=<lower>" in err
    assert main(["run", "--resume", str(out), "teacher.train.lr=0.001", "--quiet", "--no-report"]) == 0
    assert "Restarting teacher, distill from epoch 0" in capsys.readouterr().err
    assert load_config(out / "config.yaml").teacher.train == {"lr": 0.001}
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["stages"]) == {"teacher", "scratch", "distill"}
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in lines] == [("teacher", 1), ("scratch", 1), ("distill", 1)]


def test_only_the_changed_stages_restart(tmp_path, capsys):
    out = tmp_path / "run"
    # the teacher has its own lr and trains; the students' lr makes scratch diverge
    assert main(["run", "--out", str(out), *TINY, "teacher.train.lr=0.001", "train.lr=1e30"]) == 2
    assert set(json.loads((out / "stages.json").read_text())) == {"teacher"}
    teacher_bytes = (out / "teacher.safetensors").read_bytes()
    assert main(["run", "--resume", str(out), "train.lr=0.001", "--quiet", "--no-report"]) == 0
    assert "Restarting scratch, distill from epoch 0" in capsys.readouterr().err
    assert (out / "teacher.safetensors").read_bytes() == teacher_bytes  # kept, not retrained
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in lines] == [("teacher", 1), ("scratch", 1), ("distill", 1)]


def test_which_stages_restart():
    base = load_config(overrides=["teacher.train.epochs=3"])
    lr = load_config(overrides=["teacher.train.epochs=3", "train.lr=0.01"])
    assert stages_to_restart(base, lr) == ["teacher", "scratch", "distill"]  # the teacher inherits lr
    own = load_config(overrides=["teacher.train.lr=0.002"])
    assert stages_to_restart(own, load_config(overrides=["teacher.train.lr=0.002", "train.lr=0.01"])) == [
        "scratch", "distill"]
    assert stages_to_restart(own, load_config(overrides=["teacher.train.lr=0.005"])) == ["teacher", "distill"]


@pytest.mark.parametrize(("overrides", "words"), [
    (["data.batch_size=32"], "only training-schedule overrides"),
    (["train.lr=0.001"], "change no stage"),
])
def test_resume_overrides_that_are_refused(overrides, words, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *TINY, "teacher.train.lr=1e30"]) == 2
    capsys.readouterr()
    before = sorted(p.name for p in out.iterdir())
    assert main(["run", "--resume", str(out), *overrides]) == 2
    assert words in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before


def test_a_finished_run_is_not_restarted(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *TINY, "stages=[teacher]"]) == 0
    assert main(["run", "--resume", str(out), "train.lr=0.01"]) == 2
    assert "finished run" in capsys.readouterr().err
