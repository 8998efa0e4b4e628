"""The reading side (eval, report, export, --seeds, plots) for runs whose stages are not only
teacher/scratch/distill: several teachers, born-again generations, mutual learning.

The training side of these methods is built elsewhere, so the run folders here are made by
hand the way a finished run leaves them: the marker, config.yaml, every stage's weights (best
and last, different), summary.json with the stages in run order, metrics.jsonl.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from distill.classifier_run import build_classifier_data, create_classifier
from distill.cli import main
from distill.config import load_config, to_yaml
from distill.errors import DistillError
from distill.export import export
from distill.io import save_weights, write_json
from distill.metrics import collect_logits, compute_metrics
from distill.plots import COLORS, CYCLE, color, label
from distill.report import evaluate_run, run_cost, write_report
from distill.run_folder import claim
from distill.run_reader import eval_target, saved_models
from distill.seeds import aggregate, write_seed_report
from distill.stage_plan import all_stages

TEACHERS = ["teachers=[{name: a, model: mlp, kwargs: {hidden: [16]}}, {name: b, model: mlp, kwargs: {hidden: [8]}}]"]
GENERATIONS = ["self_distill.generations=3", "teacher.kwargs.channels=[8, 8]"]
MUTUAL = ["mutual.peers=[{model: mlp, kwargs: {hidden: [8]}}]"]


def fake_run(folder, overrides: list[str]) -> dict:
    """A finished run folder of the config `overrides` make; returns {(stage, key): the
    metrics of those weights on the test data} (what evaluate_run must find again)."""
    cfg = load_config(None, [*overrides, "train.epochs=1"])
    claim(folder, "run", "run folder")
    (folder / "config.yaml").write_text(to_yaml(cfg))
    data = build_classifier_data(cfg, cfg.seed)
    expected, stages, rows = {}, {}, []
    for i, stage in enumerate(all_stages(cfg)):
        for key in ("last", "best"):
            torch.manual_seed(10 * i + (key == "best"))  # every file its own weights
            model = create_classifier(cfg, stage, data).eval()
            save_weights(model, folder / f"{stage}{'-last' if key == 'last' else ''}.safetensors")
            preds = collect_logits(model, data.test, "cpu")
            expected[stage, key] = {"logits": preds.logits, **compute_metrics(preds.logits, preds.labels)}
        best, last = expected[stage, "best"], expected[stage, "last"]
        stages[stage] = {"params": sum(p.numel() for p in model.parameters()), "best_epoch": 1,
                         "val_acc": best["acc"], "test_acc": best["acc"], "last_val_acc": last["acc"],
                         "last_test_acc": last["acc"], "seconds": 0.1}
        rows.append({"stage": stage, "epoch": 1, "train_loss": 1.0 + i, "val_loss": 2.0, "train_acc": 10.0, "val_acc": 11.0})
    write_json(folder / "summary.json", {
        "name": "fake", "seed": 0, "primary": {"metric": "acc", "lower_is_better": False},
        "data": {"name": "digits", "num_classes": data.num_classes, "train": 1, "labelled": 1, "unlabelled": 0,
                 "val": 1, "test": len(preds.labels)},
        "stages": stages,
    })
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return expected


@pytest.fixture(scope="module")
def teachers_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stages") / "teachers"
    return folder, fake_run(folder, TEACHERS)


@pytest.fixture(scope="module")
def mutual_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stages") / "mutual"
    return folder, fake_run(folder, MUTUAL)


@pytest.fixture(scope="module")
def generations_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stages") / "generations"
    return folder, fake_run(folder, GENERATIONS)


# ---------------------------------------------------------------- labels and colours


def test_labels_name_every_kind_of_stage():
    assert [label(s) for s in ("teacher", "scratch", "distill")] == ["teacher", "student (scratch)", "student (distilled)"]
    assert label("teacher-cnn") == "teacher cnn"
    assert label("teacher-wide_mlp") == "teacher wide_mlp"
    assert label("assistant-1") == "assistant 1"
    assert label("gen-2") == "generation 2"
    assert label("peer-1") == "peer 1"
    assert label("scratch-peer-3") == "peer 3 (scratch)"
    assert label("something-else") == "something-else"


def test_colours_keep_the_three_and_differ_for_the_others():
    assert (color("teacher"), color("scratch"), color("distill")) == ("#4D4D4D", "#E69F00", "#0072B2")
    stages = ["teacher-a", "teacher-b", "teacher", "scratch", "gen-1", "gen-2", "distill", "peer-1"]
    colours = [color(s, stages) for s in stages]
    assert len(set(colours)) == len(stages)  # one figure never repeats a colour
    assert [color(s, stages) for s in stages] == colours  # deterministic
    assert color("teacher-a", stages) == CYCLE[0] and color("peer-1", stages) == CYCLE[4]  # by run order
    alone = color("gen-7")  # not among the stages drawn: fixed by its name
    assert alone in CYCLE and alone == color("gen-7") and alone not in COLORS.values()


# ---------------------------------------------------------------- eval targets and saved models


def test_eval_target_takes_any_stage_of_the_run(teachers_run):
    run, _ = teachers_run
    assert eval_target(run / "teacher-a.safetensors") == (run, ("teacher-a", "best"))
    assert eval_target(run / "teacher-b-last.safetensors") == (run, ("teacher-b", "last"))
    assert eval_target(run) == (run, None)


def test_eval_target_refuses_a_file_of_no_stage_and_names_the_stages(teachers_run):
    run, _ = teachers_run
    stray = run / "peer-1.safetensors"  # a stage name, but of another kind of run
    stray.write_bytes((run / "distill.safetensors").read_bytes())
    try:
        with pytest.raises(DistillError, match="teacher-a, teacher-b, teacher, scratch, distill") as e:
            eval_target(stray)
        assert "'peer-1' is no stage" in str(e.value)
    finally:
        stray.unlink()


def test_saved_models_are_every_stage_in_run_order(generations_run):
    run, _ = generations_run
    assert list(saved_models(run)) == [(s, k) for s in ("teacher", "scratch", "gen-1", "gen-2", "distill")
                                       for k in ("best", "last")]
    assert list(saved_models(run, ("gen-2", "last"))) == [("gen-2", "last")]


# ---------------------------------------------------------------- evaluation


def test_evaluate_run_has_every_stage_in_run_order_with_its_own_weights(teachers_run):
    run, expected = teachers_run
    ev = evaluate_run(run)
    assert list(ev["stages"]) == ["teacher-a", "teacher-b", "teacher", "scratch", "distill"]
    for stage, entries in ev["stages"].items():
        for key in ("best", "last"):
            assert entries[key]["nll"] == pytest.approx(expected[stage, key]["nll"], rel=1e-6), (stage, key)
    nlls = [e["best"]["nll"] for e in ev["stages"].values()]
    assert len(set(nlls)) == len(nlls)  # the files differ, so a wrong file would show


def test_students_agree_with_the_ensemble_and_teachers_get_no_agreement(teachers_run):
    run, expected = teachers_run
    ev = evaluate_run(run)
    for stage in ("teacher-a", "teacher-b", "teacher"):
        assert "agreement" not in ev["stages"][stage]["best"]
    ensemble = expected["teacher", "best"]["logits"].argmax(1)
    for stage in ("scratch", "distill"):
        for key in ("best", "last"):
            mine = expected[stage, key]["logits"].argmax(1)
            want = 100.0 * (mine == ensemble).float().mean().item()
            assert ev["stages"][stage][key]["agreement"] == pytest.approx(want, abs=1e-4), (stage, key)


def test_one_weights_file_of_a_member_teacher(teachers_run):
    run, expected = teachers_run
    ev = evaluate_run(run, only=("teacher-b", "last"))
    assert list(ev["stages"]) == ["teacher-b"] and list(ev["stages"]["teacher-b"]) == ["last"]
    assert ev["stages"]["teacher-b"]["last"]["nll"] == pytest.approx(expected["teacher-b", "last"]["nll"], rel=1e-6)


def test_mutual_learning_has_no_teacher_no_agreement_no_cost(mutual_run):
    run, _ = mutual_run
    ev = evaluate_run(run)
    assert list(ev["stages"]) == ["scratch", "scratch-peer-1", "distill", "peer-1"]
    assert all("agreement" not in e[k] for e in ev["stages"].values() for k in e)
    assert run_cost(run, repeats=1) is None


# ---------------------------------------------------------------- report.md


def _rows(text: str, heading: str) -> list[str]:
    """The first column of the table under `heading`."""
    part = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return [line.split("|")[1].strip() for line in part.splitlines() if line.startswith("|")][2:]


def test_report_lists_every_stage_in_run_order(generations_run):
    run, _ = generations_run
    text = write_report(run, repeats=1).read_text()
    order = ["teacher", "student (scratch)", "generation 1", "generation 2", "student (distilled)"]
    assert _rows(text, "## Accuracy") == order
    assert _rows(text, "## Calibration") == order
    assert _rows(text, "## Agreement with the teacher") == order[1:]
    assert "## Cost" in text  # teacher vs. the distilled student
    for png in ("curves", "accuracy", "reliability", "confusion", "cost"):
        assert (run / f"{png}.png").is_file(), png


def test_report_of_several_teachers(teachers_run):
    run, _ = teachers_run
    text = write_report(run, repeats=1).read_text()
    assert _rows(text, "## Accuracy") == ["teacher a", "teacher b", "teacher", "student (scratch)", "student (distilled)"]
    assert _rows(text, "## Agreement with the teacher") == ["student (scratch)", "student (distilled)"]
    assert "## Cost" in text


def test_report_of_mutual_learning_has_no_teacher_sections(mutual_run):
    run, _ = mutual_run
    text = write_report(run, repeats=1).read_text()
    assert _rows(text, "## Accuracy") == ["student (scratch)", "peer 1 (scratch)", "student (distilled)", "peer 1"]
    assert "## Agreement with the teacher" not in text and "## Cost" not in text
    assert (run / "reliability.png").is_file() and not (run / "cost.png").exists()


# ---------------------------------------------------------------- export / predict --stage


def test_export_takes_any_stage_and_names_the_stages_of_a_wrong_one(teachers_run, tmp_path):
    run, _ = teachers_run
    out = tmp_path / "a.safetensors"
    assert export(run, "safetensors", out, stage="teacher-a")["path"] == str(out)
    assert out.read_bytes() == (run / "teacher-a.safetensors").read_bytes()
    with pytest.raises(DistillError, match="gen-1 is no stage .*teacher-a, teacher-b, teacher, scratch, distill"):
        export(run, "safetensors", tmp_path / "x.safetensors", stage="gen-1")


def test_cli_stage_option_is_checked_against_the_run(teachers_run, tmp_path, capsys):
    run, _ = teachers_run
    assert main(["export", str(run), "--format", "safetensors", "--stage", "teacher-b",
                 "--out", str(tmp_path / "b.safetensors")]) == 0
    assert main(["export", str(run), "--format", "safetensors", "--stage", "../distill"]) == 2
    err = capsys.readouterr().err
    assert "--stage ../distill is no stage" in err and "teacher-a, teacher-b, teacher, scratch, distill" in err
    np.savez(tmp_path / "x.npz", x=np.zeros((1, 64), dtype=np.float32))
    assert main(["predict", str(run), str(tmp_path / "x.npz"), "--stage", "peer-1"]) == 2
    assert "--stage peer-1 is no stage" in capsys.readouterr().err


# ---------------------------------------------------------------- --seeds


def _summary(seed: int, accs: dict[str, tuple[float, float]]) -> dict:
    """A summary.json of one seed: {stage: (test_acc, last_test_acc)}, in that (run) order."""
    return {"name": "fake", "seed": seed, "primary": {"metric": "acc", "lower_is_better": False},
            "stages": {s: {"val_acc": t, "test_acc": t, "last_test_acc": last, "params": 10}
                       for s, (t, last) in accs.items()}}


GEN_SEEDS = [
    _summary(0, {"teacher": (90, 89), "scratch": (80, 79), "gen-1": (83, 80), "distill": (85, 84)}),
    _summary(1, {"teacher": (91, 90), "scratch": (78, 78), "gen-1": (82, 79), "distill": (80, 77)}),
]
MUTUAL_SEEDS = [
    _summary(0, {"scratch": (80, 80), "scratch-peer-1": (70, 70), "distill": (81, 80), "peer-1": (74, 73)}),
    _summary(1, {"scratch": (79, 79), "scratch-peer-1": (72, 71), "distill": (83, 82), "peer-1": (71, 72)}),
]
T1 = 12.706204736174  # t(0.975, 1)


def test_seeds_aggregate_every_stage_in_run_order_and_pair_each_student():
    agg = aggregate(GEN_SEEDS)
    assert list(agg["stages"]) == ["teacher", "scratch", "gen-1", "distill"]  # run order, not sorted
    assert agg["stages"]["gen-1"]["test_acc"]["mean"] == pytest.approx(82.5)
    assert set(agg["gains"]) == {"gen-1", "distill"}  # no gain for the teacher or scratch itself
    g = agg["gains"]["gen-1"]["test_acc"]  # 83-80 = 3, 82-78 = 4
    assert g["values"] == [3.0, 4.0] and g["mean"] == pytest.approx(3.5)
    assert g["std"] == pytest.approx(0.5 ** 0.5)
    assert g["half_width"] == pytest.approx(T1 * 0.5 ** 0.5 / 2 ** 0.5, rel=1e-4)
    assert (g["positive"], g["better"], g["seeds"]) == (2, 2, [0, 1])
    last = agg["gains"]["gen-1"]["last_test_acc"]  # 80-79 = 1, 79-78 = 1
    assert last["values"] == [1.0, 1.0] and last["std"] == 0
    d = agg["gain"]["test_acc"]  # distill - scratch: 5, 2 (the old key, unchanged)
    assert d["values"] == [5.0, 2.0] and d["mean"] == pytest.approx(3.5) and agg["gains"]["distill"] == agg["gain"]


def test_seeds_pair_a_peer_with_its_own_scratch_twin():
    agg = aggregate(MUTUAL_SEEDS)
    assert list(agg["stages"]) == ["scratch", "scratch-peer-1", "distill", "peer-1"]
    g = agg["gains"]["peer-1"]["test_acc"]  # 74-70 = 4, 71-72 = -1
    assert g["values"] == [4.0, -1.0] and g["mean"] == pytest.approx(1.5) and g["better"] == 1
    assert agg["gains"]["distill"]["test_acc"]["values"] == [1.0, 4.0]  # against scratch, not the peer's twin
    assert "scratch-peer-1" not in agg["gains"]


def test_seed_report_shows_every_stage_and_the_other_gains(tmp_path):
    out = tmp_path / "seeds"
    claim(out, "seeds", "--seeds folder")
    runs = []
    for s in MUTUAL_SEEDS:
        run = out / f"seed-{s['seed']}"
        run.mkdir()
        write_json(run / "summary.json", s)
        runs.append(run)
    text = write_seed_report(out, runs).read_text()
    assert _rows(text, "## Accuracy") == ["student (scratch)", "peer 1 (scratch)", "student (distilled)", "peer 1"]
    others = text.split("## Gains of the other students", 1)[1].split("\n## ", 1)[0]
    assert "| peer 1 | peer 1 (scratch) | val-selected | +1.50 |" in others
    header = next(line for line in text.split("## Per seed", 1)[1].splitlines() if line.startswith("| seed"))
    assert [c.strip() for c in header.split("|")[2:-3]] == ["student (scratch)", "peer 1 (scratch)",
                                                           "student (distilled)", "peer 1"]
    assert (out / "gain.png").is_file() and (out / "accuracy.png").is_file()
    assert json.loads((out / "seeds.json").read_text())["gains"]["peer-1"]["test_acc"]["mean"] == pytest.approx(1.5)
