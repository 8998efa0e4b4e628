"""A key the run would not read is an error that says why, or it is used: the user must never
believe a setting took effect when it did not."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from distill.cli import main
from distill.config import load_config
from distill.errors import ConfigError
from distill.models import create_model

LM = "task=language_model"


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["data.path=/tmp"], "data.path='/tmp' would be ignored: data.name=digits is built in"),
        ([LM, "data.path=/tmp"], "data.name=pydoc is built in"),
        ([LM, "data.augment=flip"], "task=language_model runs do not read it"),
        ([LM, "data.label_fraction=0.5"], "data.label_fraction=0.5 would be ignored"),
        ([LM, "data.unlabelled_path=x.npz"], "data.unlabelled_path"),
        (["data.tokenizer=gpt2"], "task=classification runs do not read it"),
        (["data.max_length=64"], "data.max_length"),
        (["lm.chunk=5"], "The lm section would be ignored"),
        (["data.size=32"], "only data.name=folder resizes"),
        (["data.name=npz", "data.path=x.npz", "data.label_column=y"], "only data.name=csv"),
    ],
)
def test_ignored_keys_are_errors(overrides, words):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=overrides)
    assert words in str(e.value)


def test_keys_at_their_defaults_are_fine():
    # A run folder's config.yaml spells every key of its task's schema out, at its default
    # where the run ignores it. (Another task's keys are not in the schema: tests/test_config_schema.py.)
    load_config(overrides=[LM, "train.channels_last=false", "cache.dtype=fp32", "data.path=null"])
    load_config(overrides=["data.size=null", "data.label_column=label", "data.path=null"])


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["cache.dir=/x"], "cache.dir='/x' would be ignored: only cache: disk keeps a folder (cache.mode is auto). "
                           "Set cache=disk"),
        (["cache=memory", "cache.dir=/x"], "(cache.mode is memory)"),
        (["cache=off", "cache.dir=/x"], "(cache.mode is off)"),
        (["cache=off", "cache.topk=3"], "cache.topk=3 would be ignored: the cache is off (cache.mode is off). "
                                        "Set cache=memory or cache=disk to use it, or remove cache.topk."),
        (["cache=off", "cache.dtype=fp16"], "cache.dtype='fp16' would be ignored: the cache is off"),
        ([LM, "cache=disk"], "cache.mode='disk' would be ignored: a language model's cache holds only an offline "
                             "top-k teacher"),
        ([LM, "cache=memory"], "Set cache.topk=K (e.g. cache.topk=16)"),
        ([LM, "cache=memory", "cache.topk=4", "cache.dir=/x"], "cache.dir='/x' would be ignored"),
        ([LM, "cache=off", "cache.topk=4"], "cache.topk=4 would be ignored: the cache is off"),
        ([LM, "cache.dir=/x"], "only cache: disk keeps a folder"),
    ],
)
def test_cache_keys_the_run_ignores_are_errors(overrides, words):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=overrides)
    assert words in str(e.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["cache=disk", "cache.dir=/x", "cache.dtype=fp16", "cache.topk=3"],
        ["cache=memory", "cache.dtype=fp16", "cache.topk=3"],
        ["cache=off", "cache.dir=null", "cache.topk=null", "cache.dtype=fp32"],  # at their defaults
        [LM, "cache=disk", "cache.topk=4", "cache.dir=/x"],
        [LM, "cache=memory", "cache.topk=4"],
        [LM, "cache=off"],
    ],
)
def test_cache_keys_the_run_reads_are_accepted(overrides):
    load_config(overrides=overrides)


def test_a_missing_student_checkpoint_stops_before_the_folder_exists(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "student.checkpoint=nope.pt", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "student.checkpoint '" in err and "nope.pt' is not a file" in err
    assert not out.exists()


def test_both_students_start_from_student_checkpoint(tmp_path):
    start = create_model("mlp", 10, (1, 8, 8), hidden=[64])
    with torch.no_grad():
        for p in start.parameters():
            p.fill_(0.01)  # far from any seeded initialisation
    save_file(start.state_dict(), str(tmp_path / "start.safetensors"))
    out = tmp_path / "run"
    # lr so small that one epoch leaves the weights where they started (to 1e-6)
    args = ["run", "--out", str(out), "--quiet", "--no-report", "train.epochs=1", "train.lr=1e-9",
            "teacher.model=mlp", "teacher.kwargs.hidden=[16]", f"student.checkpoint={tmp_path / 'start.safetensors'}"]
    assert main(args) == 0
    for stage in ("scratch", "distill"):
        trained = load_file(str(out / f"{stage}-last.safetensors"))
        for key, value in start.state_dict().items():
            got = trained.get(key, trained.get(f"student.{key}"))
            torch.testing.assert_close(got, value, atol=1e-6, rtol=0)


def test_the_resolved_schedule_is_printed(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "--out", str(out), "--no-report", "train.epochs=1", "teacher.train.epochs=2",
            "teacher.train.lr=0.01", "teacher.model=mlp", "teacher.kwargs.hidden=[16]"]
    assert main(args) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert ("Schedule: teacher 2 epochs, adam lr 0.01 (teacher.train sets epochs, lr); "
            "scratch and distill 1 epoch, adam lr 0.001.") in text


@pytest.mark.parametrize("n", ["0", "-1", "two"])
def test_seeds_must_be_at_least_one(n, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["run", "--seeds", n, "--out", str(out)])
    assert e.value.code == 2
    assert "N must be a whole number >= 1" in capsys.readouterr().err
    assert not out.exists()
