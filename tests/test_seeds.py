"""Multi-seed aggregation and the paired-gain interval against hand computations."""

from __future__ import annotations

import json
import math
import sys

import pytest
from matplotlib.image import imread

from distill.errors import DistillError
from distill.seeds import (
    T975,
    aggregate,
    interval,
    seed_run_dirs,
    t_quantile,
    write_folder_report,
    write_seed_report,
)


def fake_summary(seed: int, scratch: float, distill: float, teacher: float = 97.0) -> dict:
    """A summary.json of schema 1 with the accuracy fields aggregation reads."""

    def stage(acc):
        return {"params": 10, "best_epoch": 3, "val_acc": acc + 0.5, "test_acc": acc,
                "last_val_acc": acc, "last_test_acc": acc - 1}

    return {
        "schema": 1, "name": "toy", "seed": seed,
        "data": {"name": "digits", "num_classes": 10, "train": 9, "labelled": 1, "unlabelled": 8, "val": 3, "test": 3},
        "stages": {"teacher": stage(teacher), "scratch": stage(scratch), "distill": stage(distill)},
        "gain": {"test_acc": distill - scratch, "val_acc": distill - scratch, "last_test_acc": distill - scratch},
    }


SUMMARIES = [fake_summary(0, 80.0, 81.0), fake_summary(1, 82.0, 84.0), fake_summary(2, 84.0, 87.0)]


def test_interval_of_1_2_3_by_hand():
    out = interval([1.0, 2.0, 3.0])
    assert out["mean"] == 2 and out["std"] == pytest.approx(1.0) and out["df"] == 2
    half = 4.303 * 1 / math.sqrt(3)
    assert out["half_width"] == pytest.approx(half, rel=1e-3)
    assert out["ci95"] == pytest.approx([2 - half, 2 + half], rel=1e-3)


def test_one_value_has_no_spread():
    out = interval([5.0])
    assert out["mean"] == 5 and out["std"] is None and out["ci95"] is None


def test_t_table_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df, value in enumerate(T975, start=1):
        assert value == pytest.approx(stats.t.ppf(0.975, df), abs=1e-3), df


def test_t_quantile_without_scipy(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # `from scipy.stats import t` fails
    assert t_quantile(2) == (4.303, "table (normal 1.96 beyond df 30)")
    assert t_quantile(30)[0] == 2.042 and t_quantile(31)[0] == 1.96


def test_aggregate_by_hand():
    agg = aggregate(SUMMARIES)
    assert agg["n"] == 3 and agg["seeds"] == [0, 1, 2] and agg["name"] == "toy"
    scratch, distill = agg["stages"]["scratch"], agg["stages"]["distill"]
    assert scratch["test_acc"]["mean"] == pytest.approx(82) and scratch["test_acc"]["std"] == pytest.approx(2)
    assert distill["test_acc"]["mean"] == pytest.approx(84) and distill["test_acc"]["std"] == pytest.approx(3)
    assert distill["last_test_acc"]["mean"] == pytest.approx(83)
    assert agg["stages"]["teacher"]["test_acc"]["std"] == 0
    gain = agg["gain"]["test_acc"]  # per seed 1, 2, 3
    assert gain["values"] == [1, 2, 3] and gain["mean"] == pytest.approx(2) and gain["std"] == pytest.approx(1)
    assert gain["ci95"][1] - gain["mean"] == pytest.approx(4.303 / math.sqrt(3), rel=1e-3)
    assert gain["positive"] == 3 and gain["seeds"] == [0, 1, 2]
    assert agg["gain"]["last_test_acc"]["values"] == [1, 2, 3]


def test_aggregate_adds_evaluation_metrics_from_report_json():
    reports = []
    for s, ece in zip(SUMMARIES, (2.0, 4.0, 6.0), strict=True):
        ev = {"stages": {"distill": {"best": {"ece": ece, "nll": 0.3, "agreement": 90.0, "kl_teacher": 0.1}}}}
        reports.append({**s, "evaluation": ev})
    agg = aggregate(reports)
    assert agg["stages"]["distill"]["ece"]["mean"] == pytest.approx(4) and agg["stages"]["distill"]["ece"]["std"] == pytest.approx(2)
    assert "ece" not in agg["stages"]["scratch"]


def test_aggregate_refuses_nothing_and_repeated_seeds():
    with pytest.raises(DistillError, match="at least one"):
        aggregate([])
    with pytest.raises(DistillError, match="more than once"):
        aggregate([SUMMARIES[0], SUMMARIES[0]])


def seed_folders(root, summaries=SUMMARIES):
    dirs = []
    for s in summaries:
        d = root / f"seed-{s['seed']}"
        d.mkdir()
        (d / "summary.json").write_text(json.dumps(s))
        dirs.append(d)
    return dirs


def test_seed_run_dirs_in_seed_order(tmp_path):
    dirs = seed_folders(tmp_path, [fake_summary(s, 80, 81) for s in (10, 2, 1)])
    (tmp_path / "seed-7").mkdir()  # unfinished: no summary.json
    assert seed_run_dirs(tmp_path) == [dirs[2], dirs[1], dirs[0]]
    with pytest.raises(DistillError, match="neither a finished run"):
        write_folder_report(tmp_path / "seed-7")


def test_write_seed_report(tmp_path):
    dirs = seed_folders(tmp_path)
    path = write_seed_report(tmp_path, dirs)
    text = path.read_text()
    assert "## Accuracy (%)" in text and "95% t-interval" in text
    assert "| student (distilled) | 84.50 ± 3.00 | 84.00 ± 3.00 | 83.00 ± 3.00 |" in text
    assert "| val-selected | +2.00 | 1.00 |" in text and "3 / 3" in text
    assert "[seed-1](seed-1)" in text
    agg = json.loads((tmp_path / "seeds.json").read_text())
    assert agg["gain"]["test_acc"]["mean"] == pytest.approx(2)
    for name in ("accuracy.png", "gain.png"):
        image = imread(tmp_path / name)
        assert image.shape[0] >= 250 and image.shape[1] >= 350
        assert image[..., :3].std() > 0.05
