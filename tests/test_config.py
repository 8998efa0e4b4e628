"""load_config / parse_override: defaults, overrides, files and every error message."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.config import ClassificationConfig, load_config, parse_override, stage_train, to_yaml
from distill.errors import ConfigError, DistillError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(REPO.glob("configs/**/*.yaml")) + sorted(REPO.glob("configs/**/*.yml"))


def config_error(*overrides: str, path=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return str(info.value)


# ---------------------------------------------------------------- parse_override


@pytest.mark.parametrize(
    ("text", "path", "value"),
    [
        ("train.epochs=5", ["train", "epochs"], 5),
        ("loss.kd.T=2.5", ["loss", "kd", "T"], 2.5),
        ("teacher.kwargs.hidden=[32, 16]", ["teacher", "kwargs", "hidden"], [32, 16]),
        ("train.nesterov=true", ["train", "nesterov"], True),
        ("loss.kd=null", ["loss", "kd"], None),
        ("name=my-run", ["name"], "my-run"),
        ("data.path=a=b", ["data", "path"], "a=b"),
    ],
)
def test_parse_override(text, path, value):
    assert parse_override(text) == (path, value)


@pytest.mark.parametrize("text", ["train.epochs", "=5", "train..epochs=5", ".epochs=5", "train.=5"])
def test_parse_override_rejects_malformed(text):
    with pytest.raises(ConfigError, match="dotted.key=value"):
        parse_override(text)


def test_malformed_override_through_load_config():
    msg = config_error("train.epochs")
    assert "train.epochs" in msg and "=" in msg


# ---------------------------------------------------------------- defaults and overrides


def test_default_config_is_the_schema_default():
    cfg = load_config()
    assert cfg == ClassificationConfig()
    assert cfg.loss == {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "T": 4.0}}


def test_override_train_epochs():
    cfg = load_config(overrides=["train.epochs=5"])
    assert cfg.train.epochs == 5
    assert cfg.train.lr == ClassificationConfig().train.lr  # the rest untouched


def test_override_kd_temperature_keeps_default_weights():
    cfg = load_config(overrides=["loss.kd.T=2"])
    assert cfg.loss["kd"]["T"] == 2
    assert cfg.loss["kd"]["weight"] == 0.9
    assert cfg.loss["ce"] == {"weight": 0.1}


def test_override_student_model_does_not_leak_mlp_kwargs():
    cfg = load_config(overrides=["student.model=cnn"])
    assert cfg.student.model == "cnn"
    assert cfg.student.kwargs == {}
    assert cfg.teacher == ClassificationConfig().teacher


def test_override_student_model_with_its_kwargs():
    cfg = load_config(overrides=["student.model=cnn", "student.kwargs.channels=[8, 16]"])
    assert cfg.student.model == "cnn"
    assert cfg.student.kwargs == {"channels": [8, 16]}


def test_override_student_kwargs_keeps_default_model():
    cfg = load_config(overrides=["student.kwargs.hidden=[64]"])
    assert cfg.student.model == "mlp"
    assert cfg.student.kwargs == {"hidden": [64]}


def test_override_one_model_kwarg_keeps_the_other_default_kwargs():
    # Like loss.kd.T=2 keeping the default weights: changing the teacher's width must not
    # silently drop its default dropout.
    default = ClassificationConfig().teacher
    cfg = load_config(overrides=["teacher.kwargs.channels=[8, 16]"])
    assert cfg.teacher.model == default.model
    assert cfg.teacher.kwargs == {**default.kwargs, "channels": [8, 16]}
    assert "dropout" in cfg.teacher.kwargs


def test_null_removes_a_loss_term():
    cfg = load_config(overrides=["loss.kd=null"])
    assert "kd" not in cfg.loss
    assert cfg.loss == {"ce": {"weight": 0.1}}


def test_later_override_wins():
    assert load_config(overrides=["train.epochs=5", "train.epochs=7"]).train.epochs == 7


@pytest.mark.parametrize(
    ("override", "key", "value"),
    [("loss.kd.weight=5e-1", "weight", 0.5), ("loss.kd.T=1e1", "T", 10.0)],
)
def test_loss_numbers_in_exponent_notation(override, key, value):
    # train.lr=1e-3 works (pydantic converts it); loss parameters must accept the same spelling.
    assert load_config(overrides=["train.lr=1e-3"]).train.lr == pytest.approx(1e-3)
    cfg = load_config(overrides=[override])
    assert cfg.loss["kd"][key] == pytest.approx(value)


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: from-file\ntrain:\n  epochs: 3\n  optimizer: sgd\n")
    cfg = load_config(path)
    assert (cfg.name, cfg.train.epochs, cfg.train.optimizer) == ("from-file", 3, "sgd")
    assert cfg.train.lr == ClassificationConfig().train.lr
    assert cfg.loss == ClassificationConfig().loss
    assert load_config(path, ["train.epochs=9"]).train.epochs == 9


def test_to_yaml_round_trips(tmp_path):
    cfg = load_config(overrides=["train.epochs=4", "loss.kd.T=2", "student.model=cnn", "seed=3"])
    path = tmp_path / "c.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.loss and cfg.stages  # a runnable experiment
    assert load_config(overrides=[]) != cfg or path.name == "digits_transfer.yaml"


def test_demo_config_file_is_the_built_in_default():
    # its header: `distill run` and `distill run configs/digits_transfer.yaml` are the same run
    path = REPO / "configs" / "digits_transfer.yaml"
    if not path.is_file():
        pytest.skip("configs/digits_transfer.yaml not present")
    assert load_config(path) == load_config()


# ---------------------------------------------------------------- errors


def test_config_error_is_a_distill_error():
    assert issubclass(ConfigError, DistillError)


def test_unknown_key_suggests_the_closest_and_lists_valid_keys():
    msg = config_error("train.epoch=5")
    assert "'epoch'" in msg
    assert "Did you mean 'epochs'?" in msg
    for key in ("epochs", "optimizer", "lr", "schedule", "warmup_epochs"):
        assert key in msg


def test_unknown_top_level_key():
    msg = config_error("trian.epochs=5")
    assert "'trian'" in msg
    assert "top level" in msg
    assert "Did you mean 'train'?" in msg
    for key in ("data", "teacher", "student", "loss", "stages"):
        assert key in msg


def test_unknown_nested_data_key():
    msg = config_error("data.batchsize=5")
    assert "batch_size" in msg


def test_wrong_type_names_the_field():
    msg = config_error("train.epochs=abc")
    assert "train.epochs" in msg
    assert "abc" in msg


@pytest.mark.parametrize("value", ["0", "-3"])
def test_epochs_must_be_positive(value):
    msg = config_error(f"train.epochs={value}")
    assert "train.epochs" in msg
    assert "greater than 0" in msg


@pytest.mark.parametrize("value", ["0", "-1"])
def test_temperature_must_be_positive(value):
    msg = config_error(f"loss.kd.T={value}")
    assert "loss.kd" in msg
    assert "T must be > 0" in msg


def test_all_weights_zero():
    msg = config_error("loss.ce.weight=0", "loss.kd.weight=0")
    assert "zero" in msg


def test_no_loss_terms():
    msg = config_error("loss.kd=null", "loss.ce=null")
    assert "no loss terms" in msg


def test_negative_weight():
    msg = config_error("loss.kd.weight=-1")
    assert "loss.kd.weight" in msg and ">= 0" in msg


def test_unknown_loss_name_suggests_close_one():
    msg = config_error("loss.kdd.weight=1")
    assert "'kdd'" in msg
    assert "Did you mean 'kd'?" in msg


def test_unknown_loss_argument_lists_valid_ones():
    msg = config_error("loss.kd.weigth=0.5")
    assert "'weigth'" in msg and "loss.kd" in msg
    assert "Did you mean 'weight'?" in msg
    assert "T" in msg.split("Valid keys")[1]


def test_ce_takes_only_a_weight():
    msg = config_error("loss.ce.T=2")
    assert "loss.ce" in msg and "T" in msg


def test_unknown_optimizer():
    msg = config_error("train.optimizer=adamm")
    assert "train.optimizer" in msg
    for name in ("adam", "adamw", "sgd"):
        assert name in msg


def test_unknown_stage():
    msg = config_error("stages=[teacher, distil]")
    assert "stages" in msg and "distill" in msg


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    msg = config_error(path=missing)
    assert str(missing) in msg
    assert "does not exist" in msg


def test_invalid_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: [1, 2\n")
    assert "not valid YAML" in config_error(path=path)


def test_yaml_file_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    assert "mapping" in config_error(path=path)


def test_teacher_train_overrides_only_the_teacher_stage():
    cfg = load_config(None, ["train.epochs=5", "teacher.train={epochs: 2, lr: 0.01}"])
    teacher, student = stage_train(cfg, "teacher"), stage_train(cfg, "distill")
    assert (teacher.epochs, teacher.lr) == (2, 0.01)
    assert (student.epochs, student.lr) == (5, cfg.train.lr)
    assert teacher.optimizer == cfg.train.optimizer  # the rest is inherited
    with pytest.raises(ConfigError, match="Unknown key 'epoch' under 'teacher.train'. Did you mean 'epochs'"):
        load_config(None, ["teacher.train.epoch=2"])
    with pytest.raises(ConfigError, match="student.train is not used"):
        load_config(None, ["student.train.lr=0.1"])
