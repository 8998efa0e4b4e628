"""Step-based schedules (issue 16, part 4): train.max_steps, train.eval_every and
train.checkpoint_every in steps as well as epochs; warmup_steps; the records, the selection and
exact resume from a mid-epoch step checkpoint; the same keys under teacher.train."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import distill.stages
from distill import Distiller, evaluate, fit
from distill.checkpoint import POINTER, Checkpointer
from distill.cli import main
from distill.config import TrainConfig, load_config, stage_train, to_yaml
from distill.errors import ConfigError
from distill.progress import StageProgress
from distill.schedule import Every, Plan, lr_factor, parse_every

STEPS = 6  # the blobs fixture: 96 training samples in batches of 16


def _cfg(**kw) -> TrainConfig:
    base = {"epochs": 4, "lr": 0.02, "schedule": "constant", "optimizer": "adam", "checkpoint_every": 0}
    return TrainConfig(**{**base, **kw})


def _fit(blobs, tiny_mlp, cfg, **kw):
    train, val, dim, classes = blobs()
    distiller = Distiller(None, tiny_mlp(dim, classes))
    losses = []
    torch.manual_seed(11)  # dropout draws
    result = fit(distiller, train, val, cfg, "cpu", on_step=lambda info: losses.append(float(info["loss"])), **kw)
    return result, losses, distiller, val


# ---------------------------------------------------------------- the keys


@pytest.mark.parametrize(("value", "every"), [
    (1, Every(1, "epoch")), (3, Every(3, "epoch")), (0, Every(0, "epoch")), ("2 epochs", Every(2, "epoch")),
    ("1 epoch", Every(1, "epoch")), ("500 steps", Every(500, "step")), ("500steps", Every(500, "step")),
    ("1 step", Every(1, "step")), (" 20 Steps ", Every(20, "step")), ("7_steps", Every(7, "step")),
])
def test_every_parses_epochs_and_steps(value, every):
    assert parse_every(value) == every


@pytest.mark.parametrize("value", ["500", "5 minutes", "steps", "-1 steps", -1, 1.5, True, None, "1.5 epochs"])
def test_every_refuses_anything_else(value):
    with pytest.raises(ValueError):
        parse_every(value)


def test_old_configs_keep_their_meaning_and_saved_configs_round_trip(tmp_path):
    cfg = load_config()
    assert cfg.train.checkpoint_every == Every(1, "epoch") and cfg.train.eval_every == Every(1, "epoch")
    assert cfg.train.max_steps is None and cfg.train.warmup_steps == 0
    old = tmp_path / "old.yaml"
    old.write_text("train:\n  epochs: 3\n  checkpoint_every: 2\n")
    assert load_config(old).train.checkpoint_every == Every(2, "epoch")
    cfg = load_config(None, ["train.max_steps=40", "train.eval_every=10 steps", "train.checkpoint_every=5steps",
                             "train.warmup_steps=4"])
    saved = tmp_path / "saved.yaml"
    saved.write_text(to_yaml(cfg))
    assert "eval_every: 10 steps" in saved.read_text() and "checkpoint_every: 5 steps" in saved.read_text()
    assert load_config(saved) == cfg
    assert "checkpoint_every: 1\n" in to_yaml(load_config())  # epochs are saved as before: an int


def test_the_keys_work_under_teacher_train():
    cfg = load_config(None, ["teacher.train.max_steps=9", "teacher.train.eval_every=3 steps",
                             "teacher.train.checkpoint_every=2 steps", "teacher.train.warmup_steps=2"])
    teacher, students = stage_train(cfg, "teacher"), stage_train(cfg, "scratch")
    assert (teacher.max_steps, teacher.eval_every, teacher.checkpoint_every) == (9, Every(3, "step"), Every(2, "step"))
    assert (students.max_steps, students.eval_every) == (None, Every(1, "epoch"))
    inherited = stage_train(load_config(None, ["train.max_steps=50", "teacher.train.lr=0.01"]), "teacher")
    assert inherited.max_steps == 50


@pytest.mark.parametrize(("overrides", "expected"), [
    (["train.max_steps=100", "train.epochs=5"],
     "train.epochs=5 would be ignored: train.max_steps=100 sets the length of training"),
    (["train.max_steps=100", "teacher.train.epochs=5"],
     "teacher.train.epochs=5 would be ignored: train.max_steps=100 (which teacher.train inherits)"),
    (["teacher.train.max_steps=100", "teacher.train.epochs=5"],
     "teacher.train.epochs=5 would be ignored: teacher.train.max_steps=100 sets"),
    (["train.eval_every=0"], "eval_every must be at least 1"),
    (["train.eval_every=10 minutes"], "'500 steps'"),
    (["train.checkpoint_every=-2"], "0 or more"),
    (["train.warmup_epochs=1", "train.warmup_steps=10"], "both set the warm-up"),
    (["train.max_steps=0"], "train.max_steps"),
])
def test_contradictions_and_bad_values_are_refused(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert expected in str(info.value)


@pytest.mark.parametrize("overrides", [
    ["train.max_steps=100", "train.epochs=50"],  # epochs at its default (saved configs hold every key)
    ["train.max_steps=100", "teacher.train.epochs=5", "teacher.train.max_steps=null"],  # teacher by epochs
    ["teacher.train.max_steps=100", "train.epochs=5"],  # teacher by steps, students by epochs
    ["task=language_model", "train.max_steps=10"],  # the LM teacher.train default (epochs 6) is a default
])
def test_epochs_beside_max_steps_where_it_is_a_default_or_another_stage(overrides):
    load_config(None, overrides)


# ---------------------------------------------------------------- the lr schedule


def test_cosine_is_counted_in_steps_with_max_steps():
    cfg = TrainConfig(epochs=50, max_steps=14, schedule="cosine")
    assert lr_factor(cfg, 0, STEPS) == 1.0
    assert lr_factor(cfg, 7, STEPS) == pytest.approx(0.5)
    assert lr_factor(cfg, 14, STEPS) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(cfg, 13, STEPS) == pytest.approx(0.5 * (1 + math.cos(math.pi * 13 / 14)))


def test_warmup_steps_then_cosine_to_max_steps():
    cfg = TrainConfig(max_steps=20, schedule="cosine", warmup_steps=4)
    assert [lr_factor(cfg, s, STEPS) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lr_factor(cfg, 4, STEPS) == 1.0
    assert lr_factor(cfg, 12, STEPS) == pytest.approx(0.5)
    assert lr_factor(cfg, 20, STEPS) == pytest.approx(0.0, abs=1e-12)
    by_epochs = TrainConfig(max_steps=20, schedule="cosine", warmup_epochs=1)  # warmup_epochs: still epochs
    assert lr_factor(by_epochs, STEPS - 1, STEPS) == 1.0 and lr_factor(by_epochs, 0, STEPS) == 1 / STEPS


def test_fit_lr_reaches_zero_at_max_steps(blobs, tiny_mlp):
    cfg = _cfg(max_steps=14, epochs=50, schedule="cosine", eval_every="1 step")
    result, _, _, _ = _fit(blobs, tiny_mlp, cfg)
    lrs = [r["lr"] for r in result.history]  # the lr of each record's (one) step
    assert lrs == pytest.approx([0.02 * lr_factor(cfg, s, STEPS) for s in range(14)])
    assert lrs[-1] < 0.02 * 0.02 and all(a > b for a, b in zip(lrs, lrs[1:], strict=False))


# ---------------------------------------------------------------- length, evaluations, selection


def test_max_steps_stops_mid_epoch_at_exactly_that_step(blobs, tiny_mlp):
    result, losses, _, _ = _fit(blobs, tiny_mlp, _cfg(max_steps=14, epochs=50))
    assert len(losses) == 14  # optimizer steps, counted by on_step
    # evaluations at each epoch's end (eval_every: 1 epoch) and after the last step, mid-epoch
    assert [(r["epoch"], r["step"]) for r in result.history] == [(1, 6), (2, 12), (2.3333, 14)]
    assert isinstance(result.history[0]["epoch"], int)


@pytest.mark.parametrize(("kw", "steps"), [
    ({"max_steps": 14, "epochs": 50, "eval_every": "4 steps"}, [4, 8, 12, 14]),
    ({"epochs": 3, "eval_every": "5 steps"}, [5, 10, 15, 18]),
    ({"epochs": 3, "eval_every": "6 steps"}, [6, 12, 18]),
    ({"epochs": 5, "eval_every": 2}, [12, 24, 30]),
    ({"epochs": 5, "eval_every": "2 epochs"}, [12, 24, 30]),
    ({"max_steps": 16, "epochs": 50, "eval_every": "2 epochs"}, [12, 16]),
])
def test_eval_every_gives_one_record_per_evaluation(blobs, tiny_mlp, kw, steps):
    result, losses, _, _ = _fit(blobs, tiny_mlp, _cfg(**kw))
    assert [r["step"] for r in result.history] == steps
    assert [r["epoch"] for r in result.history] == [s // STEPS if s % STEPS == 0 else round(s / STEPS, 4)
                                                    for s in steps]
    assert len(losses) == steps[-1]
    # each record's training means are over the steps since the previous evaluation
    for before, record in zip([0, *steps], result.history, strict=False):
        window = losses[before:record["step"]]
        assert record["train_loss"] == pytest.approx(sum(window) / len(window), rel=1e-5)
        assert {"val_acc", "val_loss", "train_acc", "seconds", "lr"} <= record.keys()


def test_selection_picks_the_best_evaluation_mid_epoch(blobs, tiny_mlp):
    cfg = _cfg(max_steps=17, epochs=50, eval_every="1 step", lr=0.005)
    result, _, distiller, val = _fit(blobs, tiny_mlp, cfg)
    accs = [r["val_acc"] for r in result.history]
    assert len(accs) == 17 and len(set(accs)) > 3
    best = next(r for r in result.history if r["val_acc"] == max(accs))  # the first of the best
    assert (result.best_step, result.best_epoch, result.best_val["acc"]) == (best["step"], best["epoch"], max(accs))
    distiller.load_state_dict(result.best_state)
    assert evaluate(distiller.student, val, "cpu")["acc"] == max(accs)


def test_epoch_unit_records_say_the_epoch_and_the_step(blobs, tiny_mlp):
    result, losses, _, _ = _fit(blobs, tiny_mlp, _cfg(epochs=3))
    assert [(r["epoch"], r["step"]) for r in result.history] == [(1, 6), (2, 12), (3, 18)]
    assert len(losses) == 18 and result.best_epoch in (1, 2, 3) and result.best_step == 6 * result.best_epoch


def test_plan_units():
    plan = Plan(STEPS, 20, Every(4, "step"), Every(1, "epoch"))
    assert [s for s in range(1, 21) if plan.evaluates(s)] == [4, 8, 12, 16, 20]
    assert [s for s in range(1, 21) if plan.checkpoints(s)] == [6, 12, 18, 20]
    assert not any(Plan(STEPS, 20, Every(1), Every(0)).checkpoints(s) for s in range(1, 21))


# ---------------------------------------------------------------- exact resume from a step checkpoint


class Killed(BaseException):
    """The process dies here (nothing after it runs, no stop checkpoint)."""


def _fit_with_checkpoints(blobs, tiny_mlp, cfg, folder, kill_at=None, resume=False):
    train, val, dim, classes = blobs()
    distiller = Distiller(None, tiny_mlp(dim, classes))
    ckpt = Checkpointer(folder, "distill")
    calls = []

    def on_step(info):
        calls.append(1)
        if kill_at is not None and len(calls) == kill_at:
            raise Killed

    torch.manual_seed(11)
    result = fit(distiller, train, val, cfg, "cpu", on_step=on_step, checkpointer=ckpt,
                 resume=ckpt.load() if resume else None)
    return result, distiller, len(calls)


def test_a_step_checkpoint_mid_epoch_resumes_bit_for_bit(blobs, tiny_mlp, tmp_path):
    cfg = _cfg(max_steps=23, epochs=50, schedule="cosine", eval_every="5 steps", checkpoint_every="4 steps")
    reference, ref_distiller, _ = _fit_with_checkpoints(blobs, tiny_mlp, cfg, tmp_path / "ref")
    folder = tmp_path / "run"
    folder.mkdir()
    with pytest.raises(Killed):  # after step 11: the last checkpoint is step 8 (epoch 1, step 2 of it)
        _fit_with_checkpoints(blobs, tiny_mlp, cfg, folder, kill_at=11)
    stem = json.loads((folder / POINTER).read_text())["stem"]
    assert stem == "ckpt-distill-0001-000002"
    state = Checkpointer(folder, "distill").load()["state"]
    assert [r["step"] for r in state.history] == [5] and state.partial["reported"]["loss"] == 3.0
    torch.manual_seed(999)  # another process: the RNG comes back from the checkpoint
    resumed, distiller, steps = _fit_with_checkpoints(blobs, tiny_mlp, cfg, folder, resume=True)
    assert steps == 23 - 8
    for a, b in zip(ref_distiller.state_dict().values(), distiller.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert reference.best_state.keys() == resumed.best_state.keys()
    assert all(torch.equal(reference.best_state[k], resumed.best_state[k]) for k in reference.best_state)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in reference.history]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.history] == strip
    assert [r["step"] for r in resumed.history] == [5, 10, 15, 20, 23]
    assert resumed.best_step == reference.best_step


def test_a_stop_at_an_epochs_last_step_resumes_bit_for_bit(blobs, tiny_mlp, tmp_path, monkeypatch):
    """The stop checkpoint comes after the step's evaluation and the epoch's end."""
    import distill.engine
    from distill.runtime import Interrupted

    cfg = _cfg(epochs=3, eval_every="4 steps", checkpoint_every=0)
    _, ref_distiller, _ = _fit_with_checkpoints(blobs, tiny_mlp, cfg, tmp_path / "ref")
    folder = tmp_path / "run"
    folder.mkdir()
    calls = iter(range(10**6))
    monkeypatch.setattr(distill.engine, "stop_requested", lambda: next(calls) == 11)  # after step 12
    with pytest.raises(Interrupted):
        _fit_with_checkpoints(blobs, tiny_mlp, cfg, folder)
    monkeypatch.setattr(distill.engine, "stop_requested", lambda: False)
    state = Checkpointer(folder, "distill").load()["state"]
    assert (state.epoch, state.step, [r["step"] for r in state.history]) == (2, 0, [4, 8, 12])
    resumed, distiller, steps = _fit_with_checkpoints(blobs, tiny_mlp, cfg, folder, resume=True)
    assert steps == 6 and [r["step"] for r in resumed.history] == [4, 8, 12, 16, 18]
    for a, b in zip(ref_distiller.state_dict().values(), distiller.state_dict().values(), strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- distill run


RUN = ["--quiet", "--no-report", "stages=[scratch]", "train.threads=1", "train.deterministic=true",
       "train.max_steps=23", "train.eval_every=5 steps", "train.checkpoint_every=4 steps"]


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_distill_run_killed_after_a_step_checkpoint_resumes_bit_for_bit(tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    assert main(["run", "--out", str(reference), *RUN]) == 0
    real_fit = distill.stages.fit

    def killed_fit(distiller, loader, val, train, device, on_step, on_epoch, **kw):
        assert len(loader) > 11  # the kill falls inside epoch 1
        count = iter(range(1, 10**6))

        def on_step_then_die(info):
            on_step(info)
            if next(count) == 11:  # after the checkpoint at step 8 and the record at step 10
                raise Killed

        return real_fit(distiller, loader, val, train, device, on_step_then_die, on_epoch, **kw)

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(distill.stages, "fit", killed_fit)
        with pytest.raises(Killed):
            main(["run", "--out", str(out), *RUN])
    assert [r["step"] for r in _records(out)] == [5, 10]  # 10: written after the checkpoint
    assert json.loads((out / POINTER).read_text())["stem"] == "ckpt-scratch-0000-000008"
    assert main(["run", "--resume", str(out), "--quiet", "--no-report"]) == 0
    for stem in ("scratch", "scratch-last"):
        a, b = (load_file(str(d / f"{stem}.safetensors")) for d in (reference, out))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stem
    assert [(r["stage"], r["step"], r["epoch"]) for r in _records(out)] == [
        (r["stage"], r["step"], r["epoch"]) for r in _records(reference)]
    assert [r["step"] for r in _records(out)] == [5, 10, 15, 20, 23]
    summary = json.loads((out / "summary.json").read_text())["stages"]["scratch"]
    best = next(r for r in _records(out) if r["step"] == summary["best_step"])
    assert summary["best_epoch"] == best["epoch"] and summary["val_acc"] == best["val_acc"]


def test_distill_run_teacher_train_keys(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--quiet", "--no-report", "stages=[teacher]", "teacher.model=mlp",
                 "teacher.kwargs.hidden=[16]", "teacher.train.max_steps=7", "teacher.train.eval_every=3 steps",
                 "train.epochs=2"]) == 0
    assert [(r["stage"], r["step"]) for r in _records(out)] == [("teacher", 3), ("teacher", 6), ("teacher", 7)]


# ---------------------------------------------------------------- the progress bar


def test_progress_bar_counts_to_max_steps_and_shows_the_step():
    with StageProgress("scratch", epochs=50, steps_per_epoch=10, start=4, max_steps=25) as bar:
        assert bar.bar.tasks[0].total == 25 and bar.bar.tasks[0].completed == 4
        for _ in range(21):
            bar.step({"loss": torch.tensor(1.0)})
        bar.epoch_done({"epoch": 2.5, "step": 25, "train_loss": 0.5, "val_acc": 90.0})
        assert bar.bar.tasks[0].completed == 25
    assert "(step 25/25)" in bar.val
    with StageProgress("scratch", epochs=3, steps_per_epoch=10, quiet=True) as bar:
        bar.epoch_done({"epoch": 1.5, "step": 15, "train_loss": 0.5, "val_acc": 90.0})
    assert bar.total == 30 and "(epoch 1.5/3)" in bar.val
