"""distill tune: the search end to end (CLI and Python API), resume after a stop and after a
kill mid-trial, the pruning glue, --space errors, selection on validation, best.yaml."""

from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("optuna")

import optuna  # noqa: E402

import distill  # noqa: E402
from distill import tune_search as tune_module  # noqa: E402
from distill.cli import main  # noqa: E402
from distill.config import load_config  # noqa: E402
from distill.errors import DistillError  # noqa: E402
from distill.runtime import Interrupted  # noqa: E402
from distill.tune_search import Pruning  # noqa: E402

# Tiny and fast: a small teacher for 2 epochs, students for 3, a small validation split.
TINY = ["train.epochs=3", "teacher.train.epochs=2", "teacher.kwargs.channels=[8,16]", "data.val_max=60"]


def _summaries(out):
    """trial folder name -> that trial's summary.json (finished trials only)."""
    return {p.parent.name: json.loads(p.read_text()) for p in (out / "trials").glob("*/summary.json")}


def test_cli_end_to_end_selects_on_validation(tmp_path, capsys):
    out = tmp_path / "search"
    rc = main(["tune", *TINY, "--trials", "3", "--out", str(out), "--seeds", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "trial 3/3" in printed and "about" in printed and "best" in printed
    result = json.loads((out / "tune.json").read_text())
    assert [r["state"] for r in result["trials"]] == ["complete"] * 3
    # the teacher was trained once; every trial distilled from its weights, through one disk cache
    assert sorted(p.name for p in (out / "teachers").iterdir()) == ["seed-0"]
    for trial in (out / "trials").iterdir():
        cfg = load_config(trial / "config.yaml")
        assert cfg.stages == ["distill"]
        assert cfg.teacher.checkpoint == str((out / "teachers/seed-0/teacher.safetensors").absolute())
        assert cfg.cache.mode == "disk" and cfg.cache.dir == str((out / "caches/seed-0").absolute())
    # selection on validation: the best trial has the highest val_acc of all trial runs
    summaries = _summaries(out)
    vals = {int(k.split("-")[1]): s["stages"]["distill"]["val_acc"] for k, s in summaries.items()}
    assert result["best"]["value"] == pytest.approx(max(vals.values()))
    assert vals[result["best"]["trial"]] == max(vals.values())
    # best.yaml loads and holds the best trial's params (the CE weight tied to 1 - KD weight)
    best = load_config(out / "best.yaml")
    params = result["best"]["params"]
    assert best.loss["kd"]["T"] == pytest.approx(params["loss.kd.T"])
    assert best.loss["kd"]["weight"] == pytest.approx(params["loss.kd.weight"])
    assert best.loss["ce"]["weight"] == pytest.approx(1 - params["loss.kd.weight"])
    assert best.train.lr == pytest.approx(params["train.lr"])
    assert best.stages == ["teacher", "scratch", "distill"] and best.teacher.checkpoint is None
    # test numbers come from the seed runs of the best and the default config, paired
    for name in ("best", "default"):
        assert (out / name / "seed-0" / "summary.json").is_file()
    assert result["tuned"]["n"] == result["default"]["n"] == 1
    default_cfg = load_config(out / "default" / "seed-0" / "config.yaml")
    assert default_cfg.loss["kd"]["T"] == 4.0 and default_cfg.train.lr == 1e-3
    md = (out / "tune.md").read_text()
    assert "## Trials" in md and "Default vs tuned" in md
    assert (out / "importance.png").is_file() and (out / "parallel.png").is_file()
    # a finished search has nothing to resume, unless extended
    assert main(["tune", "--resume", str(out), "--quiet"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_api_resume_extends_and_prunes(tmp_path):
    out = tmp_path / "search"
    cfg = load_config(None, TINY)
    space = ["train.lr=1e-5..3e-1:log", "loss.kd.T=1..10"]
    first = distill.tune(cfg, out, trials=2, space=space, quiet=True, startup_trials=1)
    assert len(first["trials"]) == 2
    stamp = {k: (out / "trials" / k / "summary.json").stat().st_mtime_ns for k in _summaries(out)}
    second = distill.tune(None, out, trials=6, resume=True, quiet=True)
    states = [r["state"] for r in second["trials"]]
    assert len(states) == 6 and "pruned" in states  # the median pruner stopped a trial early
    pruned = next(r for r in second["trials"] if r["state"] == "pruned")
    assert pruned["validations"] < 3
    for k, t in stamp.items():  # finished trials were not run again
        assert (out / "trials" / k / "summary.json").stat().st_mtime_ns == t
    record = json.loads((out / "tune-run.json").read_text())
    assert record["trials"] == 6 and record["finished"] is True
    with pytest.raises(DistillError, match="saved space"):
        distill.tune(None, out, trials=8, space=["loss.kd.T=1..3"], resume=True, quiet=True)


def test_killed_trial_continues_its_folder(tmp_path, monkeypatch):
    out = tmp_path / "search"
    cfg = load_config(None, TINY)
    real_run = tune_module.run

    def kill_in_trial_1(run_cfg, folder, **kwargs):
        hook = kwargs.get("on_epoch")
        if folder.name == "trial-1":

            def dying(stage, record):
                hook(stage, record)
                if record["epoch"] == 2:
                    raise KeyboardInterrupt  # as a Ctrl-C (or a kill) between epochs
            kwargs["on_epoch"] = dying
        return real_run(run_cfg, folder, **kwargs)

    monkeypatch.setattr(tune_module, "run", kill_in_trial_1)
    with pytest.raises((KeyboardInterrupt, Interrupted)):
        distill.tune(cfg, out, trials=2, quiet=True)
    assert (out / "trials" / "trial-1" / "config.yaml").is_file()
    assert not (out / "trials" / "trial-1" / "summary.json").exists()
    monkeypatch.setattr(tune_module, "run", real_run)
    result = distill.tune(None, out, resume=True, quiet=True)
    rows = {r["number"]: r for r in result["trials"]}
    assert rows[1]["state"] == "killed (continued as trial 2)"
    assert rows[2]["state"] == "complete" and rows[2]["params"] == rows[1]["params"]
    assert rows[2]["validations"] == 3  # epochs 1-2 replayed from the killed trial, 3 run now
    assert not (out / "trials" / "trial-2").exists()  # trial 2 continued trial-1's folder
    metrics = (out / "trials" / "trial-1" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in metrics] == [1, 2, 3]
    summary = json.loads((out / "trials" / "trial-1" / "summary.json").read_text())
    assert rows[2]["value"] == pytest.approx(summary["stages"]["distill"]["val_acc"])


def test_pruning_hook_reports_and_prunes():
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    good = study.ask()
    hook = Pruning(good, "acc", by_steps=False)
    hook("teacher", {"epoch": 1, "val_acc": 1.0})  # other stages are not the objective
    for epoch in (1, 2, 3):
        hook("distill", {"epoch": epoch, "step": 10 * epoch, "val_acc": 90.0 + epoch})
    assert study.trials[0].intermediate_values == {1: 91.0, 2: 92.0, 3: 93.0}
    study.tell(good, 93.0)
    bad = study.ask()
    hook = Pruning(bad, "acc", by_steps=False)
    with pytest.raises(optuna.TrialPruned):
        hook("distill", {"epoch": 1, "step": 10, "val_acc": 10.0})
    study.tell(bad, state=optuna.trial.TrialState.PRUNED)
    again = study.ask()  # a killed trial's reports, replayed into the trial that continues it
    replay = Pruning(again, "acc", by_steps=True, history=[[10, 20.0], [20, float("nan")]])
    assert replay.reported == {10} and replay.last == 20.0
    replay("distill", {"epoch": 1, "step": 10, "val_acc": 99.0})  # already reported: not again
    assert study.trials[2].intermediate_values == {10: 20.0}


@pytest.mark.parametrize(("space", "message"), [
    ("loss.kd.T", "is not key=low..high"),
    ("loss.kd.T=5..1", "must be below high"),
    ("train.lr=0..1e-2:log", "log scale needs low > 0"),
    ("loss.kd.T=a..4", "is not a number"),
    ("loss.kd.Tx=1..4", "loss.kd has no key 'Tx'. Keys there: T, weight"),
    ("train.optimizer=1..2", "not a number"),
    ("train.epochs=1.5..4", "must be whole numbers"),
    ("teacher.kwargs.dropout=0..1", "trained once"),
    ("seed=0..9", "selects noise"),
    ("loss.kd.T=0..4", "invalid at loss.kd.T=0"),
])
def test_space_errors_are_one_paragraph(tmp_path, capsys, space, message):
    out = tmp_path / "search"
    assert main(["tune", *TINY, "--space", space, "--out", str(out), "--trials", "2"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert not out.exists()  # refused before anything was written


def test_refusals(tmp_path, capsys, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(["tune", *TINY, "--out", str(mine), "--trials", "2"]) == 2
    assert "did not write" in capsys.readouterr().err and (mine / "notes.txt").read_text() == "keep"
    assert main(["tune", "--resume", str(tmp_path / "none")]) == 2
    assert "holds no distill tune search" in capsys.readouterr().err
    assert main(["tune", "stages=[teacher,scratch]", "--out", str(tmp_path / "x")]) == 2
    assert "stages has no distill" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if optuna were not installed
    with pytest.raises(DistillError, match=r"pip install 'distill\[tune\]'"):
        distill.tune(load_config(None, TINY), tmp_path / "y", trials=1)
