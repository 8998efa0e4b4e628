"""The reporting commands: distill report, distill eval, distill run --seeds."""

from __future__ import annotations

import json

import pytest

from distill.cli import main

TINY = ["--quiet", "train.epochs=2", "teacher.model=mlp", "teacher.kwargs.hidden=[32]", "data.batch_size=128"]


@pytest.fixture(scope="module")
def seeds_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("seeds") / "runs"
    assert main(["run", "--seeds", "2", "--out", str(out), *TINY]) == 0
    return out


def test_seeds_run_each_seed_and_aggregate(seeds_dir):
    summaries = [json.loads((seeds_dir / f"seed-{k}" / "summary.json").read_text()) for k in (0, 1)]
    assert [s["seed"] for s in summaries] == [0, 1]
    agg = json.loads((seeds_dir / "seeds.json").read_text())
    gains = [s["gain"]["test_acc"] for s in summaries]
    assert agg["gain"]["test_acc"]["mean"] == pytest.approx(sum(gains) / 2)
    assert (seeds_dir / "report.md").read_text().count("seed") >= 2
    assert (seeds_dir / "seed-0" / "report.md").exists()  # each run got its own report


def test_report_command_rewrites_the_report(seeds_dir, capsys):
    run_dir = seeds_dir / "seed-1"
    (run_dir / "report.md").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.md").exists() and "report.md" in capsys.readouterr().out


def test_eval_reproduces_the_summary(seeds_dir, capsys):
    run_dir = seeds_dir / "seed-0"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert main(["eval", str(run_dir / "distill.safetensors")]) == 0
    out = capsys.readouterr().out
    assert f"{summary['stages']['distill']['test_acc']:.2f}" in out


def test_eval_of_a_missing_file_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nothing.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err


def test_tensorboard_logging(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--no-report", "log.tensorboard=true", "stages=[teacher]", *TINY]) == 0
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert (out / "metrics.jsonl").exists()  # the run stays readable without TensorBoard


def test_tensorboard_missing_says_how_to_install(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert main(["run", "--out", str(tmp_path / "run"), "log.tensorboard=true", *TINY]) == 2
    assert "pip install 'distill[tensorboard]'" in capsys.readouterr().err
