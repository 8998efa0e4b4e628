"""`run --seeds`, `report`, `eval` and `export` work for every task through its Task (issue 15):
the CLI reads a run folder's task from its config.yaml and has no task branches."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

import distill.cli
from distill.cli import main
from distill.errors import DistillError
from distill.tasks import ClassificationTask, LanguageModelTask, task_of_run
from distill.trust import NO_TRUST

CLS = ["train.epochs=1", "teacher.train.epochs=1", "teacher.model=mlp", "teacher.kwargs.hidden=[16]",
       "student.kwargs.hidden=[16]", "data.batch_size=128", "train.threads=1"]
LM = [
    "task=language_model", "data.name=text", "data.max_length=32", "data.batch_size=8",
    "teacher.kwargs={n_layer: 1, n_embd: 16, n_head: 2, n_positions: 32}",
    "student.kwargs={n_layer: 1, n_embd: 8, n_head: 2, n_positions: 32}",
    "train.epochs=1", "train.lr=0.01", "teacher.train.epochs=1", "train.threads=1",
]


def _summaries(folder: Path) -> list[dict]:
    return [json.loads((folder / f"seed-{k}" / "summary.json").read_text()) for k in (0, 1)]


def _check_aggregate(folder: Path, metric: str, lower: bool) -> dict:
    """seeds.json: the runs' primary metric, mean of the seeds and the paired gain."""
    agg = json.loads((folder / "seeds.json").read_text())
    assert agg["primary"] == {"metric": metric, "lower_is_better": lower} and agg["n"] == 2
    summaries = _summaries(folder)
    for stage in ("scratch", "distill"):
        values = [s["stages"][stage][f"test_{metric}"] for s in summaries]
        assert agg["stages"][stage][f"test_{metric}"]["mean"] == pytest.approx(statistics.fmean(values))
        assert agg["stages"][stage][f"test_{metric}"]["std"] == pytest.approx(statistics.stdev(values))
    gains = [s["stages"]["distill"][f"test_{metric}"] - s["stages"]["scratch"][f"test_{metric}"] for s in summaries]
    gain = agg["gain"][f"test_{metric}"]
    assert gain["values"] == pytest.approx(gains) and gain["mean"] == pytest.approx(statistics.fmean(gains))
    assert gain["better"] == sum((g < 0) if lower else (g > 0) for g in gains)
    for k in (0, 1):
        assert (folder / f"seed-{k}" / "report.md").is_file()  # each seed got its task's report
    return agg


# ---------------------------------------------------------------- classification


@pytest.fixture(scope="module")
def cls_seeds(tmp_path_factory):
    out = tmp_path_factory.mktemp("cls") / "seeds"
    assert main(["run", "--seeds", "2", "--out", str(out), "--quiet", *CLS]) == 0
    return out


def test_classifier_seeds_aggregate_accuracy(cls_seeds):
    _check_aggregate(cls_seeds, "acc", False)
    assert "## Accuracy (%)" in (cls_seeds / "report.md").read_text()


def test_classifier_report_eval_export_through_the_task(cls_seeds, tmp_path, capsys):
    run = cls_seeds / "seed-0"
    assert isinstance(task_of_run(run), ClassificationTask)
    assert isinstance(task_of_run(run / "distill.safetensors"), ClassificationTask)
    (run / "report.md").unlink()
    assert main(["report", str(run)]) == 0 and (run / "report.md").is_file()
    summary = json.loads((run / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    assert f"{summary['stages']['distill']['test_acc']:.2f}" in capsys.readouterr().out
    assert main(["export", str(run), "--format", "safetensors", "--out", str(tmp_path / "s.safetensors")]) == 0
    assert (tmp_path / "s.safetensors").read_bytes() == (run / "distill.safetensors").read_bytes()
    assert main(["export", str(run), "--format", "hf"]) == 2
    assert "--format onnx, torchscript or safetensors" in capsys.readouterr().err


def test_classifier_load_run_is_the_one_rebuild(cls_seeds):
    run = cls_seeds / "seed-0"
    task = task_of_run(run)
    model, data = task.load_run(run, "distill", NO_TRUST)
    again, same = task.load_run(run, "distill", NO_TRUST, data, last=True)
    assert same is data and not model.training and not again.training
    evaluation = task.evaluate_run(run / "distill.safetensors", [], "test", NO_TRUST)
    summary = json.loads((run / "summary.json").read_text())
    assert evaluation["stages"]["distill"]["best"]["acc"] == pytest.approx(summary["stages"]["distill"]["test_acc"])


# ---------------------------------------------------------------- language models


@pytest.fixture(scope="module")
def lm_seeds(tmp_path_factory):
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("lm")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(f"paragraph {i}: " + "the cat sat on the mat. " * (1 + i % 3) for i in range(40)))
    out = root / "seeds"
    assert main(["run", "--seeds", "2", "--out", str(out), "--quiet", *LM, f"data.path={corpus}"]) == 0
    return out


def test_language_model_seeds_aggregate_perplexity(lm_seeds):
    agg = _check_aggregate(lm_seeds, "ppl", True)
    assert {"test_loss", "test_acc"} <= set(agg["stages"]["distill"])  # NLL and next-token accuracy too
    text = (lm_seeds / "report.md").read_text()
    assert "## Perplexity" in text and "seeds with gain < 0 (better)" in text
    assert f"{agg['gain']['test_ppl']['mean']:+.3f}" in text


def test_language_model_seeds_table(lm_seeds, capsys):
    from rich.console import Console

    from distill.seeds import aggregate, load_summary, seed_run_dirs
    from distill.tables import seeds_table

    console = Console(record=True, width=120)
    console.print(seeds_table(aggregate([load_summary(d) for d in seed_run_dirs(lm_seeds)])))
    text = console.export_text()
    assert "test ppl (val-selected)" in text and "(better)" in text


def test_language_model_report(lm_seeds, capsys):
    run = lm_seeds / "seed-1"
    assert isinstance(task_of_run(run), LanguageModelTask)
    (run / "report.md").unlink()
    assert main(["report", str(run)]) == 0
    text = (run / "report.md").read_text()
    summary = json.loads((run / "summary.json").read_text())
    for stage in ("teacher", "scratch", "distill"):
        r = summary["stages"][stage]
        assert f"{r['test_ppl']:.3f}" in text and f"{r['test_loss']:.4f}" in text
    assert f"{summary['gain']['test_ppl']:+.3f}" in text and "## Validation by epoch" in text
    assert (run / "curves.png").is_file()
    assert main(["report", str(lm_seeds)]) == 0  # the --seeds folder: every seed, then the aggregate
    assert "seeds.json" not in capsys.readouterr().err


def test_language_model_eval_and_export_through_the_task(lm_seeds, tmp_path, capsys):
    run = lm_seeds / "seed-0"
    summary = json.loads((run / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "val"]) == 0
    shown = capsys.readouterr().out
    assert "distill-last" in shown and f"{summary['stages']['scratch']['val_ppl']:.3f}" in shown
    assert main(["eval", str(run / "scratch.safetensors")]) == 0
    shown = capsys.readouterr().out
    assert f"{summary['stages']['scratch']['test_ppl']:.3f}" in shown and "distill" not in shown
    assert main(["eval", str(run), "--data", "x.txt"]) == 2
    assert "takes no --data" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    diff = re.search(r"difference (\S+)\)", capsys.readouterr().out).group(1)
    assert float(diff) < 1e-5 and (tmp_path / "hf" / "config.json").is_file()
    assert main(["export", str(run), "--format", "torchscript"]) == 2
    err = capsys.readouterr().err
    assert "is a task=language_model run" in err and "--format hf" in err


# ---------------------------------------------------------------- the CLI knows no task


def test_cli_has_no_task_branches():
    source = Path(distill.cli.__file__).read_text()
    for word in ("language_model", "classification", "_is_lm", "cfg.task", "getattr(", "hasattr(", ".lm"):
        assert word not in source, word


def test_eval_refuses_overrides_it_would_ignore(tmp_path, capsys):
    """A finished run is evaluated as it trained: train.* and other non-data keys would be ignored."""
    from distill.run_reader import run_config

    (tmp_path / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(DistillError, match="train.lr=5 would be ignored"):
        run_config(tmp_path, ["data.batch_size=32", "train.lr=5"])
    assert run_config(tmp_path, ["data.batch_size=32"]).data.batch_size == 32
