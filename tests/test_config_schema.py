"""The run config is a union of one schema per task, keyed on `task`, with a `cache:` section:
another task's key is an unknown key, the cache shorthand and old spellings, round trips."""

from __future__ import annotations

import pytest
import yaml

from distill.cli import main
from distill.config import (
    CacheConfig,
    ClassificationConfig,
    LanguageModelConfig,
    absolute_paths,
    load_config,
    parse,
    to_yaml,
    validate,
)
from distill.errors import ConfigError

LM = "task=language_model"


def config_error(*overrides: str, path=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return str(info.value)


# ---------------------------------------------------------------- one schema per task


def test_the_task_picks_the_schema():
    assert type(load_config()) is ClassificationConfig
    lm = load_config(overrides=[LM])
    assert type(lm) is LanguageModelConfig and lm.task == "language_model"
    assert not hasattr(load_config(), "lm") and not hasattr(load_config().data, "max_length")
    assert not hasattr(lm.data, "augment") and not hasattr(lm.data, "label_fraction")


def test_parse_and_validate_return_the_tasks_class():
    assert type(parse({})) is ClassificationConfig  # no task: the digits demo
    assert type(parse({"task": "language_model"})) is LanguageModelConfig
    assert type(validate({"task": "language_model", "data": {"name": "text"}})) is LanguageModelConfig
    assert parse({}) == ClassificationConfig()


def test_language_model_defaults_are_the_pydoc_example():
    cfg = load_config(overrides=[LM])
    assert cfg.name == "lm-pydoc" and cfg.data.name == "pydoc" and cfg.data.batch_size == 32
    assert cfg.train.optimizer == "adamw" and cfg.train.lr == 0.003
    assert cfg.teacher.model == "gpt2" and cfg.teacher.train == {"epochs": 6, "lr": 0.002}
    assert set(cfg.loss) == {"ce", "forward_kl"}
    # a partial train section keeps the other LM defaults
    assert load_config(overrides=[LM, "train.epochs=2"]).train.optimizer == "adamw"


@pytest.mark.parametrize(
    ("overrides", "key", "where", "other"),
    [
        (["data.max_length=64"], "max_length", "under 'data'", "language_model"),
        (["data.tokenizer=byte"], "tokenizer", "under 'data'", "language_model"),  # even at its default
        (["lm.chunk=5"], "lm", "at the top level", "language_model"),
        ([LM, "data.augment=flip"], "augment", "under 'data'", "classification"),
        ([LM, "data.label_fraction=0.1"], "label_fraction", "under 'data'", "classification"),
        ([LM, "data.unlabelled_path=x.npz"], "unlabelled_path", "under 'data'", "classification"),
    ],
)
def test_another_tasks_key_is_an_unknown_key(overrides, key, where, other):
    msg = config_error(*overrides)
    assert f"Unknown key '{key}' {where}" in msg
    assert f"is a {other} key" in msg or f"holds {other} settings" in msg
    assert f"set task={other}" in msg
    valid = msg.split("Valid keys there: ")[1]
    if where == "under 'data'":
        assert "batch_size" in valid and "val_fraction" in valid and key not in valid.split(", ")
    else:
        assert "cache" in valid and "lm" not in valid.split(", ")


@pytest.mark.parametrize(
    ("overrides", "typo", "meant"),
    [
        ([LM, "data.max_lenght=64"], "max_lenght", "max_length"),
        (["data.augmnet=flip"], "augmnet", "augment"),
        ([LM, "lm.chunks=5"], "chunks", "chunk"),
        (["cache.mod=disk"], "mod", "mode"),
    ],
)
def test_a_typo_in_a_tasks_own_key_gets_did_you_mean(overrides, typo, meant):
    msg = config_error(*overrides)
    assert f"Unknown key '{typo}'" in msg and f"Did you mean '{meant}'?" in msg
    assert meant in msg.split("Valid keys there: ")[1]


def test_an_unknown_task_lists_the_tasks():
    msg = config_error("task=langauge_model")
    assert "'task'" in msg and "classification" in msg and "language_model" in msg


@pytest.mark.parametrize("task", ["languagemodel", "Language_Model", "classifcation"])
def test_a_misspelt_task_gets_did_you_mean(task):
    meant = "classification" if task.startswith("class") else "language_model"
    assert f"is not a task. Did you mean '{meant}'?" in config_error(f"task={task}")
    assert "Did you mean" not in config_error("task=[1, 2]")  # not a name: no guess, still the list


def test_a_task_without_built_in_data_is_checked(monkeypatch):
    import distill.config

    monkeypatch.delitem(distill.config.BUILT_IN_DATA, "classification")  # as for a new task
    assert load_config(overrides=["data.path=/tmp"]).data.path == "/tmp"  # no KeyError


@pytest.mark.parametrize(("overrides", "key"), [([LM, "train.channels_last=true"], "train.channels_last"),
                                                ([LM, "cache.dtype=fp16"], "cache.dtype")])
def test_shared_section_keys_a_language_model_does_not_read(overrides, key):
    assert f"{key}=" in config_error(*overrides) and "task=language_model runs do not read it" in config_error(*overrides)


# ---------------------------------------------------------------- the cache section


def test_cache_defaults():
    assert load_config().cache == CacheConfig() == CacheConfig(mode="auto", dtype="fp32", topk=None, dir=None)


@pytest.mark.parametrize(
    ("text", "mode"),
    [("cache: off\n", "off"), ("cache: auto\n", "auto"), ("cache: disk\n", "disk"),
     ("cache: 'off'\n", "off"), ("cache: {mode: memory, topk: 5}\n", "memory")],
)
def test_cache_shorthand_in_a_file(tmp_path, text, mode):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert yaml.safe_load(text)["cache"] is not None
    assert load_config(path).cache.mode == mode


def test_yaml_off_read_as_false_means_off():
    assert yaml.safe_load("cache: off")["cache"] is False  # YAML 1.1
    assert validate({"cache": False}).cache.mode == "off"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["cache=disk"], {"mode": "disk"}),
        (["cache=off"], {"mode": "off"}),
        (["cache.mode=memory"], {"mode": "memory"}),
        (["cache={mode: disk, dir: x}"], {"mode": "disk", "dir": "x"}),
        (["cache=disk", "cache.dir=/x"], {"mode": "disk", "dir": "/x"}),
        (["cache.dir=/x", "cache=disk"], {"mode": "disk", "dir": "/x"}),  # the shorthand sets only the mode
        (["cache.topk=3", "cache=memory"], {"mode": "memory", "topk": 3}),
        (["cache=memory", "cache.dtype=fp16", "cache.topk=8"], {"mode": "memory", "dtype": "fp16", "topk": 8}),
    ],
)
def test_cache_overrides(overrides, expected):
    assert load_config(overrides=overrides).cache == CacheConfig(**expected)


def test_cache_section_from_a_file_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("cache: {mode: disk, dir: x}\n")
    assert load_config(path).cache == CacheConfig(mode="disk", dir="x")
    path.write_text("cache: {mode: memory, dtype: fp16}\n")
    assert load_config(path, ["cache=disk"]).cache == CacheConfig(mode="disk", dtype="fp16")
    path.write_text("cache: off\n")
    assert load_config(path, ["cache.dir=y", "cache.mode=disk"]).cache == CacheConfig(mode="disk", dir="y")


@pytest.mark.parametrize(("old", "new"), [("cache_dtype=fp16", "cache.dtype=fp16"), ("cache_topk=4", "cache.topk=4"),
                                          ("cache_dir=/x", "cache.dir=/x"), ("cache_topk=null", "cache.topk=null")])
def test_old_cache_keys_are_refused_with_the_new_name(old, new):
    msg = config_error(old)
    assert f"{old.split('=')[0]} is now {new.split('=')[0]}" in msg and new in msg


def test_old_cache_keys_in_a_file_are_refused(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("cache: memory\ncache_dtype: fp16\n")
    assert "cache.dtype" in config_error(path=path)


@pytest.mark.parametrize("overrides", [["cache=on"], ["cache.mode=fast"], ["cache.dtype=fp8"], ["cache.topk=0"]])
def test_bad_cache_values_name_the_key(overrides):
    msg = config_error(*overrides)
    assert "'cache." in msg


def test_cache_dir_is_made_absolute(tmp_path):
    cfg = absolute_paths(load_config(overrides=["cache=disk", "cache.dir=c"]), tmp_path)
    assert cfg.cache.dir == str(tmp_path / "c") and cfg.cache.mode == "disk"
    lm = absolute_paths(load_config(overrides=[LM, "cache=disk", "cache.topk=4", "cache.dir=c"]), tmp_path)
    assert type(lm) is LanguageModelConfig and lm.cache.dir == str(tmp_path / "c")


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.epochs=4", "cache=disk", "cache.topk=5", "cache.dtype=fp16", "data.augment=flip"],
        [LM, "data.name=text", "data.max_length=32", "lm.chunk=64", "cache=disk", "cache.topk=4"],
    ],
)
def test_saved_config_round_trips(tmp_path, overrides):
    cfg = load_config(overrides=overrides)
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(cfg))
    again = load_config(path)
    assert again == cfg and type(again) is type(cfg)
    saved = yaml.safe_load(path.read_text())
    assert saved["task"] == cfg.task and isinstance(saved["cache"], dict)


def test_model_copy_keeps_the_class():
    lm = load_config(overrides=[LM])
    copy = lm.model_copy(update={"seed": 3})
    assert type(copy) is LanguageModelConfig and copy.seed == 3 and copy.lm == lm.lm
    assert validate(copy.model_dump(mode="json")) == copy


@pytest.mark.parametrize("task", [[], [LM]])
def test_print_config_prints_a_cache_section(task, capsys):
    topk = ["cache.topk=4"] if task else []  # an LM's cache is a top-k teacher
    assert main(["run", "--print-config", *task, *topk, "cache=disk", "cache.dir=somewhere"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["cache"]["mode"] == "disk" and printed["cache"]["dir"].endswith("somewhere")
    assert set(printed["cache"]) == {"mode", "dtype", "topk", "dir"}
    assert not any(key.startswith("cache_") for key in printed)
    assert ("lm" in printed) == bool(task)
