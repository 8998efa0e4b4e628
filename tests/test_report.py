"""write_report on a real tiny run, the evaluation behind it, and model_cost (never timed)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from matplotlib.image import imread
from torch import nn

from distill.cli import main
from distill.cost import compare_cost, model_cost
from distill.errors import DistillError
from distill.models import count_parameters, create_model
from distill.report import evaluate_target, evaluation_table, read_run, write_report
from distill.seeds import write_folder_report

PNGS = ("curves", "accuracy", "reliability", "confusion", "cost")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "tiny"
    assert main(["run", "--out", str(out), "--quiet", "train.epochs=2", "teacher.model=mlp", "teacher.kwargs.hidden=[32]"]) == 0
    return out


@pytest.fixture(scope="module")
def report(run_dir):
    path = write_report(run_dir, repeats=2)
    return path, json.loads((run_dir / "report.json").read_text())


def test_report_md_has_every_table(report):
    path, _ = report
    assert path.name == "report.md" and path.is_file()
    text = path.read_text()
    for heading in ("## Accuracy", "## Calibration", "## Agreement with the teacher", "## Cost",
                    "## Per-class accuracy", "## Training curves"):
        assert heading in text, heading
    for row in ("| teacher |", "| student (scratch) |", "| student (distilled) |", "| student / teacher |"):
        assert row in text, row
    for png in PNGS:
        assert f"]({png}.png)" in text


def test_report_json_merges_the_summary_and_matches_its_accuracies(report, run_dir):
    _, rep = report
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {k: rep[k] for k in summary} == summary
    ev = rep["evaluation"]
    assert ev["split"] == "test" and set(ev["stages"]) == {"teacher", "scratch", "distill"}
    for stage, e in ev["stages"].items():  # re-evaluated weights give the run's own numbers
        assert e["best"]["acc"] == pytest.approx(summary["stages"][stage]["test_acc"], abs=1e-6)
        assert e["last"]["acc"] == pytest.approx(summary["stages"][stage]["last_test_acc"], abs=1e-6)
        assert 0 <= e["best"]["ece"] <= 100 and e["best"]["nll"] > 0
        assert sum(e["best"]["reliability"]["count"]) == summary["data"]["test"]
        assert np.sum(e["best"]["confusion"]) == summary["data"]["test"]
        assert "confusion" not in e["last"]
    for stage in ("scratch", "distill"):
        assert 0 <= ev["stages"][stage]["best"]["agreement"] <= 100
        assert ev["stages"][stage]["best"]["kl_teacher"] >= 0
    assert "agreement" not in ev["stages"]["teacher"]["best"]
    cost = rep["cost"]
    assert cost["student"]["params"] == summary["stages"]["distill"]["params"]
    assert cost["teacher"]["params"] == summary["stages"]["teacher"]["params"]


@pytest.mark.parametrize("name", PNGS)
def test_each_png_decodes_and_is_not_blank(report, run_dir, name):
    image = imread(run_dir / f"{name}.png")
    h, w = image.shape[:2]
    assert h >= 250 and w >= 400, (h, w)
    rgb = np.round(image[..., :3].reshape(-1, 3) * 255).astype(np.int64)
    assert rgb.std(axis=0).max() > 10  # not one flat colour
    colours = np.unique(rgb[:, 0] * 65536 + rgb[:, 1] * 256 + rgb[:, 2])
    assert len(colours) > 20  # lines, bars, text: real content


def test_evaluate_target_on_one_weights_file(run_dir):
    result = evaluate_target(run_dir / "distill-last.safetensors")
    assert list(result["stages"]) == ["distill"] and list(result["stages"]["distill"]) == ["last"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert result["stages"]["distill"]["last"]["acc"] == pytest.approx(summary["stages"]["distill"]["last_test_acc"])
    assert "agreement" in result["stages"]["distill"]["last"]  # the run's teacher is beside it
    val = evaluate_target(run_dir, split="val")
    assert val["stages"]["scratch"]["best"]["acc"] == pytest.approx(summary["stages"]["scratch"]["val_acc"])


def test_clear_errors_for_wrong_targets(tmp_path, run_dir):
    with pytest.raises(DistillError, match="neither a run folder nor a weights file"):
        evaluate_target(tmp_path / "missing")
    with pytest.raises(DistillError, match="not a finished run folder"):
        read_run(tmp_path)
    (tmp_path / "other.safetensors").write_bytes(b"")
    with pytest.raises(DistillError, match="Cannot tell which model"):
        evaluate_target(tmp_path / "other.safetensors")
    with pytest.raises(DistillError, match="Unknown split"):
        evaluate_target(run_dir, split="train")


# ---------------------------------------------------------------- cost (no timing asserted)


def test_model_cost_counts_and_leaves_the_model_alone():
    model = create_model("mlp", 10, (1, 8, 8), hidden=[16]).train()
    cost = model_cost(model, (1, 8, 8), repeats=1, warmup=0, batch_size=8)
    assert cost["params"] == count_parameters(model) == 64 * 16 + 16 + 16 * 10 + 10
    assert cost["flops"] == 2 * (64 * 16 + 16 * 10)  # a multiply-add is 2 FLOPs
    assert cost["size_bytes"] > 4 * cost["params"]  # float32 weights plus a small header
    assert cost["latency_ms"] > 0 and cost["throughput"] > 0 and cost["batch_size"] == 8
    assert model.training and next(model.parameters()).device.type == "cpu"


def test_compare_cost_ratios():
    teacher, student = nn.Linear(20, 5), nn.Linear(20, 5, bias=False)
    out = compare_cost(teacher, student, (20,), repeats=1, warmup=0, batch_size=4)
    assert out["ratio"]["params"] == pytest.approx(100 / 105)
    for key in ("size_bytes", "flops", "latency_ms", "throughput"):
        assert out["ratio"][key] == pytest.approx(out["student"][key] / out["teacher"][key])
    assert out["ratio"]["flops"] == pytest.approx(100 / 100)  # 2*20*5 each; bias adds none


def test_evaluation_table_renders(run_dir):
    from rich.console import Console

    console = Console(record=True, width=140)
    console.print(evaluation_table(evaluate_target(run_dir / "distill.safetensors")))
    text = console.export_text()
    assert "student (distilled)" in text and "val-selected" in text


def test_folder_report_of_a_seeds_folder(tmp_path, run_dir, report):
    shutil.copytree(run_dir, tmp_path / "seed-0")
    path = write_folder_report(tmp_path)
    assert path == tmp_path / "report.md" and (tmp_path / "seed-0" / "report.md").is_file()
    text = path.read_text()
    assert "## Calibration and agreement" in text  # evaluation metrics came from report.json
    assert "[seed-0](seed-0/report.md)" in text
