"""Several teachers, teacher assistants, born-again generations and mutual learning, end to end
from the CLI and the Python API: the stages each trains, what they are taught by, resume after
Ctrl-C equal to an uninterrupted run, and the config mistakes refused before anything trains."""

from __future__ import annotations

import itertools
import json
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import distill
from distill import stages
from distill.cli import main
from distill.config import load_config
from distill.ensemble import Ensemble
from distill.errors import ConfigError
from distill.seeds import aggregate, load_summary
from distill.stages import Run

BASE = ["--quiet", "train.epochs=2", "train.deterministic=true", "train.threads=1", "data.val_max=90"]
SMALL_TEACHER = ["teacher.model=mlp", "teacher.kwargs.hidden=[32]", "teacher.train.epochs=2"]
TWO_TEACHERS = ("teachers=[{name: a, model: mlp, kwargs: {hidden: [32]}}, "
                "{name: b, model: mlp, kwargs: {hidden: [24]}, weight: 3}]")
METHODS = {  # name -> (overrides, the stage to interrupt, every stage in run order)
    "teachers": ([TWO_TEACHERS, "teacher.train.epochs=2"], "teacher-b",
                 ["teacher-a", "teacher-b", "teacher", "scratch", "distill"]),
    "assistants": ([*SMALL_TEACHER, "assistants=[{model: mlp, kwargs: {hidden: [16]}}]"], "assistant-1",
                   ["teacher", "scratch", "assistant-1", "distill"]),
    "born_again": ([*SMALL_TEACHER, "self_distill.generations=2"], "gen-1",
                   ["teacher", "scratch", "gen-1", "distill"]),
    "mutual": (["mutual.peers=[{model: mlp, kwargs: {hidden: [32]}}]", "stages=[scratch,distill]", "loss.kd.T=1"],
               "distill", ["scratch", "scratch-peer-1", "distill", "peer-1"]),
}


def _run(out: Path, name: str, *extra: str) -> int:
    return main(["run", "--out", str(out), *BASE, *METHODS[name][0], *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One uninterrupted run of each method."""
    root = tmp_path_factory.mktemp("methods")
    for name in METHODS:
        assert _run(root / name, name) == 0
    return root


def _ctrl_c_at(mp: pytest.MonkeyPatch, stage: str, step: int) -> None:
    """A real SIGINT after training step `step` of `stage` (caught by distill's handler)."""
    real_fit = stages.fit

    def fit(distiller, loader, val, train, device, on_step, on_epoch, **kw):
        if kw["checkpointer"].stage == stage:
            steps = itertools.count(1)

            def stop(info):
                on_step(info)
                if next(steps) == step:
                    signal.raise_signal(signal.SIGINT)

            return real_fit(distiller, loader, val, train, device, stop, on_epoch, **kw)
        return real_fit(distiller, loader, val, train, device, on_step, on_epoch, **kw)

    mp.setattr(stages, "fit", fit)


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_trains_its_stages_in_order(finished, name):
    summary = json.loads((finished / name / "summary.json").read_text())
    order = METHODS[name][2]
    assert list(summary["stages"]) == order
    for stage in order:
        assert (finished / name / f"{stage}.safetensors").is_file(), stage
        assert summary["stages"][stage]["test_acc"] > 0
    assert summary["gain"]["test_acc"] == pytest.approx(
        summary["stages"]["distill"]["test_acc"] - summary["stages"]["scratch"]["test_acc"])
    assert not list((finished / name).glob("ckpt-*")), "a finished run keeps no checkpoints"


@pytest.mark.parametrize("name", list(METHODS))
def test_ctrl_c_in_a_methods_own_stage_then_resume_equals_uninterrupted(tmp_path, finished, name, capsys):
    out = tmp_path / name
    with pytest.MonkeyPatch.context() as mp:
        _ctrl_c_at(mp, METHODS[name][1], step=25)  # in its second epoch
        assert _run(out, name) == 130
    assert "Traceback" not in capsys.readouterr().err
    assert main(["run", "--quiet", "--resume", str(out)]) == 0
    for stage in METHODS[name][2]:
        a, b = (load_file(str(d / f"{stage}.safetensors")) for d in (finished / name, out))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage


def test_chain_links_are_taught_by_the_link_before(finished):
    takd = json.loads((finished / "assistants" / "summary.json").read_text())["stages"]
    assert takd["distill"]["taught_by"] == "assistant-1" and "taught_by" not in takd["assistant-1"]
    born = json.loads((finished / "born_again" / "summary.json").read_text())["stages"]
    assert born["distill"]["taught_by"] == "gen-1"
    # born-again: every generation and the scratch baseline have the teacher's architecture
    assert born["gen-1"]["params"] == born["teacher"]["params"] == born["scratch"]["params"]


def test_several_teachers_make_one_ensemble_teacher(finished):
    run = finished / "teachers"
    record = json.loads((run / "summary.json").read_text())["stages"]["teacher"]
    assert record["members"] == ["a", "b"] and "val_acc" in record
    cfg = load_config(run / "config.yaml")
    model, data = distill.classifier_run.load_run(run, "teacher")
    assert isinstance(model, Ensemble)
    member = distill.classifier_run.load_run(run, "teacher-b", data=data)[0]
    state = load_file(str(run / "teacher-b.safetensors"))
    assert all(torch.equal(model.get_submodule("b").state_dict()[k], v) for k, v in state.items())
    assert model.state_dict()["_T"].item() == cfg.loss["kd"]["T"]
    assert torch.allclose(model.state_dict()["_weights"], torch.tensor([0.25, 0.75]))
    x = next(iter(data.test)).inputs[:4]
    with torch.no_grad():  # the ensemble's member b is teacher-b's saved model
        assert torch.equal(model.get_submodule("b")(x), member(x))


def test_per_teacher_terms_and_feature_terms_naming_a_teacher(tmp_path):
    out = tmp_path / "per"
    assert main(["run", "--out", str(out), *BASE, TWO_TEACHERS, "teacher.train.epochs=1",
                 "ensemble.targets=per_teacher", "loss.hint.type=fitnet", "loss.hint.student=hidden.0",
                 "loss.hint.teacher=b.hidden.0", "loss.hint.weight=0.1"]) == 0
    row = next(json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
               if json.loads(line)["stage"] == "distill")
    assert {"train_kd_a", "train_kd_b", "train_hint"} <= set(row)


def test_a_feature_term_naming_no_teacher_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "bad"
    assert main(["run", "--out", str(out), *BASE, TWO_TEACHERS, "loss.hint.type=fitnet",
                 "loss.hint.student=hidden.0", "loss.hint.teacher=c.hidden.0"]) == 2
    err = capsys.readouterr().err
    assert "'c.hidden.0'" in err and "a.hidden.0" in err and "Traceback" not in err  # names the teachers' paths
    assert not (out / "teacher-a.safetensors").exists()


def test_mutual_peers_start_like_their_scratch_twins_and_unlike_the_student(tmp_path):
    cfg = load_config(None, METHODS["mutual"][0][:2])
    run = Run(cfg, tmp_path / "never-opened", quiet=True)
    data = run.task.build_data(cfg.seed)
    init = {s: run._new_student(s, data).state_dict() for s in ("distill", "scratch", "peer-1", "scratch-peer-1")}
    same = lambda a, b: all(torch.equal(init[a][k], init[b][k]) for k in init[a])  # noqa: E731
    assert same("distill", "scratch") and same("peer-1", "scratch-peer-1")
    assert not same("distill", "peer-1")
    assert not (tmp_path / "never-opened").exists()


def test_mutual_learning_from_the_python_api(tmp_path):
    cfg = load_config("configs/methods/dml.yaml", ["train.epochs=1", "train.threads=1", "data.val_max=90"])
    summary = distill.run(cfg, tmp_path / "dml", quiet=True)
    assert list(summary["stages"]) == ["scratch", "scratch-peer-1", "distill", "peer-1"]
    assert summary["stages"]["distill"]["cohort"] == ["distill", "peer-1"]
    assert "teacher" not in summary["stages"] and not (tmp_path / "dml" / "teacher.safetensors").exists()


@pytest.mark.parametrize(("name", "student"), [("born_again", "gen-1"), ("assistants", "distill"),
                                              ("mutual", "peer-1"), ("teachers", "distill")])
def test_seeds_of_each_method_aggregate_every_stage_and_pair_each_student(tmp_path, name, student):
    out = tmp_path / "seeds"
    assert main(["run", "--seeds", "2", "--out", str(out), "--no-report", *BASE, *METHODS[name][0]]) == 0
    agg = aggregate([load_summary(out / f"seed-{k}") for k in (0, 1)])  # seeds.json's numbers
    assert agg["n"] == 2 and list(agg["stages"]) == METHODS[name][2]
    assert all(agg["stages"][s]["test_acc"]["n"] == 2 for s in METHODS[name][2])
    runs = [json.loads((out / f"seed-{k}" / "summary.json").read_text())["stages"] for k in (0, 1)]
    twin = "scratch-peer-1" if student == "peer-1" else "scratch"
    diffs = [r[student]["test_acc"] - r[twin]["test_acc"] for r in runs]
    assert agg["gains"][student]["test_acc"]["mean"] == pytest.approx(sum(diffs) / 2)
    assert "assistant-1" not in agg["gains"]  # no scratch twin of its architecture


@pytest.mark.parametrize(("overrides", "message"), [
    ([TWO_TEACHERS, "self_distill.generations=2"], "both set"),
    (["teachers=[{name: a, model: mlp}]"], "one teacher"),
    (["teachers=[{name: a, model: mlp}, {name: a, model: cnn}]"], "more than once"),
    (["teachers=[{name: forward, model: mlp}, {name: a, model: cnn}]"], "taken by torch.nn.Module"),
    (["teachers=[{name: A-1, model: mlp}, {name: a, model: cnn}]"], "lower-case"),
    ([TWO_TEACHERS, "teacher.model=mlp"], "teacher section"),
    ([TWO_TEACHERS, "stages=[scratch,distill]"], "no checkpoint"),
    ([TWO_TEACHERS, "loss.kd.type=dkd", "loss={ce: {weight: 1.0}, dkd: {weight: 1.0}}"], "ensemble.T"),
    (["ensemble.targets=per_teacher"], "ensemble"),
    (["self_distill.generations=2", "student.kwargs.hidden=[8]"], "student section"),
    (["mutual.peers=[{model: mlp}]", "teacher.model=mlp"], "teacher section"),
    (["mutual.peers=[{model: mlp, checkpoint: x.pt}]"], "start untrained"),
    (["mutual.peers=[{model: mlp}]", "stages=[teacher,distill]"], "no teacher"),
    (["assistants=[{model: mlp}]", "cache=disk", "cache.dir=/tmp/x"], "cache.dir"),
    (["mutual.peers=[{model: mlp}]", "stages=[scratch,distill]", "cache=disk"], "no teacher whose outputs"),
    (["assistants=[{model: mlp, kwargs: {hidden: [0]}}]"], r"assistants\[0\].kwargs.hidden=\[0\] has a value below 1"),
])
def test_config_mistakes_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


@pytest.mark.parametrize("name", ["assistants", "mutual"])
def test_feature_terms_are_refused_where_the_models_change(tmp_path, capsys, name):
    out = tmp_path / name
    assert _run(out, name, "loss.hint.type=fitnet", "loss.hint.student=hidden.0", "loss.hint.teacher=hidden.0") == 2
    err = capsys.readouterr().err
    assert "logits only" in err and "Traceback" not in err
    assert not list(out.glob("*.safetensors"))


def test_resume_with_new_schedule_restarts_the_stages_that_depend_on_it():
    from distill.restart import stages_to_restart

    takd = load_config(None, METHODS["assistants"][0])
    assert stages_to_restart(takd, load_config(None, [*METHODS["assistants"][0], "train.lr=1e-4"])) == [
        "teacher", "scratch", "assistant-1", "distill"]  # the teacher inherits train.lr
    assert stages_to_restart(takd, load_config(None, [*METHODS["assistants"][0], "teacher.train.lr=1e-4"])) == [
        "teacher", "assistant-1", "distill"]
    several = load_config(None, [TWO_TEACHERS])
    changed = load_config(None, [TWO_TEACHERS.replace("weight: 3}", "weight: 3, train: {lr: 0.01}}")])
    assert stages_to_restart(several, changed) == ["teacher-b", "teacher", "distill"]
    dml = load_config(None, METHODS["mutual"][0])
    assert stages_to_restart(dml, load_config(None, [*METHODS["mutual"][0], "train.lr=1e-4"])) == [
        "scratch", "scratch-peer-1", "distill", "peer-1"]


def test_a_typo_inside_a_list_section_names_its_valid_keys():
    with pytest.raises(ConfigError, match="Did you mean 'kwargs'.*name, weight"):
        load_config(None, ["teachers=[{name: a, model: mlp, kwarg: {}}, {name: b, model: mlp}]"])
    with pytest.raises(ConfigError, match="Valid keys there: model, kwargs, checkpoint, train"):
        load_config(None, ["mutual.peers=[{model: mlp, size: 3}]"])


def test_several_teachers_from_checkpoints_need_no_teacher_stage(tmp_path, finished):
    trained = finished / "teachers"
    entries = ", ".join(f"{{name: {n}, model: mlp, kwargs: {{hidden: [{h}]}}, checkpoint: {trained}/teacher-{n}.safetensors}}"
                        for n, h in (("a", 32), ("b", 24)))
    out = tmp_path / "ready"
    assert main(["run", "--out", str(out), *BASE, f"teachers=[{entries}]", "stages=[scratch,distill]"]) == 0
    stages = json.loads((out / "summary.json").read_text())["stages"]
    before = json.loads((trained / "summary.json").read_text())["stages"]
    assert stages["teacher-a"]["checkpoint"].endswith("teacher-a.safetensors")
    assert stages["teacher-a"]["test_acc"] == pytest.approx(before["teacher-a"]["test_acc"])
    assert not (out / "teacher-a.safetensors").exists()  # read from its checkpoint, not copied


def test_a_bad_checkpoint_of_a_later_teacher_is_refused_before_the_first_trains(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *BASE, "teacher.train.epochs=1",
                 f"teachers=[{{name: a, model: mlp}}, {{name: b, model: mlp, checkpoint: {bad}}}]"]) == 2
    assert "bad.pt" in capsys.readouterr().err and not out.exists()


def test_a_run_distilling_from_teacher_checkpoint_resumes_after_ctrl_c(tmp_path, finished, capsys):
    """The teacher is recorded as finished but never copied into the folder: a resume reads it
    from teacher.checkpoint again (it looked for RUN/teacher.safetensors)."""
    ckpt = finished / "assistants" / "teacher.safetensors"
    args = [*BASE, *SMALL_TEACHER[:2], f"teacher.checkpoint={ckpt}", "stages=[scratch,distill]"]
    whole, out = tmp_path / "whole", tmp_path / "stopped"
    assert main(["run", "--out", str(whole), *args]) == 0
    with pytest.MonkeyPatch.context() as mp:
        _ctrl_c_at(mp, "distill", step=25)
        assert main(["run", "--out", str(out), *args]) == 130
    assert main(["run", "--quiet", "--resume", str(out)]) == 0, capsys.readouterr().err
    a, b = (load_file(str(d / "distill.safetensors")) for d in (whole, out))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_list_sections_checkpoints_are_made_absolute(tmp_path):
    from distill.config import absolute_paths

    cfg = load_config(None, ["teachers=[{name: a, model: mlp, checkpoint: rel/a.pt}, {name: b, model: mlp}]"])
    fixed = absolute_paths(cfg, tmp_path)
    assert fixed.teachers[0].checkpoint == str(tmp_path / "rel" / "a.pt") and fixed.teachers[1].checkpoint is None
