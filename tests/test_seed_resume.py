"""`distill run --seeds N`: Ctrl-C stops with status 130 and the resume command; `--resume OUT`
skips finished seeds, continues the interrupted one exactly, runs the rest and aggregates."""

from __future__ import annotations

import itertools
import json
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill import report, stages
from distill.checkpoint import POINTER
from distill.cli import main
from distill.seeds import RECORD

ARGS = ["--quiet", "train.epochs=2", "teacher.train.epochs=2", "train.deterministic=true", "teacher.model=mlp",
        "teacher.kwargs.hidden=[32]", "train.threads=1"]
SEEDS = 3
STEMS = ("teacher", "scratch", "scratch-last", "distill", "distill-last")


def _cheap_reports(mp: pytest.MonkeyPatch) -> None:
    """Each seed's own report (evaluation, latency) has its tests elsewhere and costs most of a
    tiny run's time; the aggregate (seeds.json, report.md) is still written from summary.json."""
    mp.setattr(report, "write_report", lambda run_dir, *a, **k: Path(run_dir) / "report.md")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted --seeds 3 run."""
    out = tmp_path_factory.mktemp("ref") / "seeds"
    with pytest.MonkeyPatch.context() as mp:
        _cheap_reports(mp)
        assert main(["run", "--seeds", str(SEEDS), "--out", str(out), *ARGS]) == 0
    return out


def _ctrl_c_in(mp: pytest.MonkeyPatch, folder: str, stage: str, *, step: int | None = None, last_epoch: bool = False):
    """Press Ctrl-C (a real SIGINT to this process, caught by distill's handler) in `folder`'s
    `stage`: after training step `step`, or at the end of the stage's last epoch (after its
    last stop check, so the stage and the seed finish)."""
    real_fit = stages.fit

    def fit(distiller, loader, val, train, device, on_step, on_epoch, **kw):
        ckpt = kw["checkpointer"]
        if ckpt.dir.name == folder and ckpt.stage == stage:
            steps = itertools.count(1)

            def on_step_then_stop(info):
                on_step(info)
                if step is not None and next(steps) == step:
                    signal.raise_signal(signal.SIGINT)

            def on_epoch_then_stop(record):
                on_epoch(record)
                if last_epoch and record["epoch"] == train.epochs:
                    signal.raise_signal(signal.SIGINT)

            return real_fit(distiller, loader, val, train, device, on_step_then_stop, on_epoch_then_stop, **kw)
        return real_fit(distiller, loader, val, train, device, on_step, on_epoch, **kw)

    mp.setattr(stages, "fit", fit)


def _assert_same_weights(a: Path, b: Path, seeds) -> None:
    for seed in seeds:
        for stem in STEMS:
            x, y = (load_file(str(d / f"seed-{seed}" / f"{stem}.safetensors")) for d in (a, b))
            assert x.keys() == y.keys()
            assert all(torch.equal(x[k], y[k]) for k in x), f"seed-{seed}/{stem}"


def _aggregate(out: Path) -> dict:
    return json.loads((out / "seeds.json").read_text())


def test_ctrl_c_mid_seed_then_resume_equals_uninterrupted(tmp_path, reference, capsys):
    out = tmp_path / "seeds"
    with pytest.MonkeyPatch.context() as mp:
        _cheap_reports(mp)
        _ctrl_c_in(mp, "seed-1", "scratch", step=25)  # epoch 2 of seed-1's scratch student
        code = main(["run", "--seeds", str(SEEDS), "--out", str(out), *ARGS])
    err = capsys.readouterr().err
    assert code == 130, err
    assert f"Continue with: distill run --resume {out}" in err and "Traceback" not in err
    assert "1 of 3 seeds finished" in err and "A checkpoint was written" in err
    assert (out / RECORD).is_file() and (out / "seed-0" / "summary.json").is_file()
    assert json.loads((out / "seed-1" / POINTER).read_text())["stage"] == "scratch"
    state = torch.load(next((out / "seed-1").glob("ckpt-*.pt")), weights_only=True)["state"]
    assert (state["epoch"], state["step"]) != (0, 0)  # stopped mid-training, not at a boundary
    assert not (out / "seed-1" / "summary.json").exists() and not (out / "seed-2").exists()
    seed0 = (out / "seed-0" / "distill.safetensors").stat().st_mtime_ns

    # a rerun of the same command names --resume; nothing is touched
    assert main(["run", "--seeds", str(SEEDS), "--out", str(out), *ARGS]) == 2
    assert f"distill run --resume {out}" in capsys.readouterr().err

    with pytest.MonkeyPatch.context() as mp:
        _cheap_reports(mp)
        assert main(["run", "--quiet", "--resume", str(out)]) == 0
    assert (out / "seed-0" / "distill.safetensors").stat().st_mtime_ns == seed0  # finished: skipped
    _assert_same_weights(reference, out, range(SEEDS))
    assert _aggregate(out) == _aggregate(reference)
    assert (out / "report.md").is_file() and not (out / "seed-1" / POINTER).exists()
    epochs = [(r["stage"], r["epoch"]) for r in map(json.loads, (out / "seed-1" / "metrics.jsonl").read_text().splitlines())]
    assert epochs == [(r["stage"], r["epoch"])
                      for r in map(json.loads, (reference / "seed-1" / "metrics.jsonl").read_text().splitlines())]

    # finished now: both a rerun and another resume say so
    assert main(["run", "--quiet", "--resume", str(out)]) == 2
    assert "finished --seeds run" in capsys.readouterr().err


def test_ctrl_c_after_a_seeds_last_step_stops_before_the_next(tmp_path, reference, capsys):
    out = tmp_path / "seeds"
    with pytest.MonkeyPatch.context() as mp:
        _cheap_reports(mp)
        _ctrl_c_in(mp, "seed-0", "distill", last_epoch=True)
        code = main(["run", "--seeds", "2", "--out", str(out), *ARGS])
    err = capsys.readouterr().err
    assert code == 130 and "Traceback" not in err, err
    assert "1 of 2 seeds finished" in err and f"distill run --resume {out}" in err
    assert (out / "seed-0" / "summary.json").is_file() and not (out / "seed-1").exists()
    with pytest.MonkeyPatch.context() as mp:
        _cheap_reports(mp)
        assert main(["run", "--quiet", "--resume", str(out), "--seeds", "2"]) == 0
    _assert_same_weights(reference, out, range(2))  # a seed's run does not depend on N
    assert _aggregate(out)["seeds"] == [0, 1]


def test_finished_or_foreign_seed_folders_are_refused(tmp_path, reference, capsys):
    assert main(["run", "--seeds", str(SEEDS), "--out", str(reference), *ARGS]) == 2
    err = capsys.readouterr().err
    assert "finished --seeds run" in err and "another --out" in err
    assert main(["run", "--quiet", "--resume", str(reference)]) == 2
    assert "finished --seeds run" in capsys.readouterr().err
    assert main(["run", "--quiet", "--resume", str(reference), "--seeds", "5"]) == 2
    assert "--seeds 3" in capsys.readouterr().err
    # a --resume of a single run with --seeds, and seed folders without the record
    assert main(["run", "--quiet", "--resume", str(reference / "seed-0"), "--seeds", "3"]) == 2
    assert "without --seeds" in capsys.readouterr().err
    old = tmp_path / "old"
    (old / "seed-0").mkdir(parents=True)
    (old / "seed-0" / "config.yaml").write_text((reference / "seed-0" / "config.yaml").read_text())
    assert main(["run", "--quiet", "--resume", str(old)]) == 2
    assert f"distill run --resume {old}/seed-<k>" in capsys.readouterr().err
    assert main(["run", "--seeds", "2", "--out", str(old), *ARGS]) == 2
    assert "seed-0" in capsys.readouterr().err and not (old / RECORD).exists()


def test_seeds_refused_before_the_first_seed_leave_no_folder(tmp_path, capsys):
    out = tmp_path / "seeds"
    assert main(["run", "--seeds", "2", "--out", str(out), "stages=[scratch,distill]", *ARGS]) == 2
    assert "needs a teacher" in capsys.readouterr().err
    assert not out.exists()
