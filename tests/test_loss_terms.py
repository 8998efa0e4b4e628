"""Loss terms have free names and an optional `type`: a method twice, a user's loss from a
nested package (from YAML and from the command line), and a config that runs no code."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import yaml

from distill.cli import main
from distill.config import load_config
from distill.errors import ConfigError
from distill.losses.fitnet import FitNet
from distill.terms import build_terms

CNNS = ["teacher.model=cnn", "teacher.kwargs.channels=[8,16]", "student.model=cnn",
        "student.kwargs.channels=[4,8]"]
FAST = ["train.epochs=1", "data.batch_size=256", "stages=[teacher,distill]", "--quiet"]
USER_LOSS = "userpkg.losses.logit:LogitMSE"


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """userpkg/losses/logit.py holds LogitMSE; importing it writes IMPORTED (to see when)."""
    pkg = tmp_path / "code" / "userpkg" / "losses"
    pkg.mkdir(parents=True)
    (pkg.parent / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    marker = tmp_path / "IMPORTED"
    (pkg / "logit.py").write_text(textwrap.dedent(f"""
        import pathlib
        from torch import nn
        pathlib.Path({str(marker)!r}).write_text("yes")

        class LogitMSE(nn.Module):
            def __init__(self, scale: float = 1.0):
                super().__init__()
                self.scale = scale

            def forward(self, student, teacher, batch):
                return self.scale * (student.logits - teacher.logits).pow(2).mean()
    """))
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    yield marker
    for name in [m for m in sys.modules if m.startswith("userpkg")]:
        del sys.modules[name]


def _yaml_config(tmp_path, loss: dict) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"loss": loss}))
    return str(path)


def test_one_method_twice_and_a_user_loss_from_yaml(tmp_path, user_package):
    loss = {
        "ce": {"weight": 0.1},
        "hint1": {"type": "fitnet", "student": "layer1", "teacher": "layer1", "weight": 1.0},
        "hint2": {"type": "fitnet", "student": "layer2", "teacher": "layer2", "weight": 0.5},
        "mine": {"type": USER_LOSS, "weight": 0.5, "scale": 2.0},
    }
    out = tmp_path / "run"
    assert main(["run", _yaml_config(tmp_path, loss), "--out", str(out), *CNNS, *FAST]) == 0
    record = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert record["stage"] == "distill"
    for name in ("train_ce", "train_hint1", "train_hint2", "train_mine"):
        assert record[name] > 0, name
    assert record["train_hint1"] != record["train_hint2"]  # two layers, two values
    terms, ce_weight = build_terms(load_config(out / "config.yaml"))
    assert ce_weight == 0.1
    assert isinstance(terms["hint1"][0], FitNet) and terms["hint1"][0].student_layers == ["layer1"]
    assert terms["hint2"][1] == 0.5
    assert type(terms["mine"][0]).__name__ == "LogitMSE" and terms["mine"][0].scale == 2.0


def test_user_loss_from_the_command_line(tmp_path, user_package):
    out = tmp_path / "run"
    args = [f"loss.mine.type={USER_LOSS}", "loss.mine.weight=0.5", "loss.mine.scale=3"]
    assert main(["run", "--out", str(out), *args, *FAST]) == 0
    cfg = load_config(out / "config.yaml")
    assert cfg.loss["mine"] == {"type": USER_LOSS, "weight": 0.5, "scale": 3}
    record = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert record["train_mine"] > 0 and record["train_kd"] > 0


def test_validating_or_printing_a_config_imports_no_code(tmp_path, user_package, capsys):
    cfg = load_config(overrides=[f"loss.mine.type={USER_LOSS}"])
    assert cfg.loss["mine"]["type"] == USER_LOSS
    assert main(["run", "--print-config", f"loss.mine.type={USER_LOSS}"]) == 0
    assert USER_LOSS in capsys.readouterr().out
    assert not user_package.exists()


def test_the_old_spelling_names_the_fix(tmp_path):
    path = _yaml_config(tmp_path, {USER_LOSS: {"weight": 1.0}})
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "type" in str(e.value) and f"loss.mine.type={USER_LOSS}" in str(e.value)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["loss.labels.type=ce"], "named `ce`"),
        (["loss.ce.type=kd"], "named `ce`"),
        (["loss.train.type=kd"], "reserved"),
        (["loss.mine.type=kdd"], "Did you mean 'kd'"),
        (["loss.mine.type=not a path:"], "package.module:Class"),
        (["loss.mine.type=pkg..mod:Cls"], "package.module:Class"),
        (["loss.mine.type=5"], "loss.mine.type"),
        (["loss.twice.type=kd", "loss.twice.Tee=2"], "Unknown key 'Tee' under 'loss.twice'"),
    ],
)
def test_bad_terms(overrides, words):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=overrides)
    assert words in str(e.value)


def test_user_loss_arguments_are_checked_before_the_run_folder_exists(tmp_path, user_package, capsys):
    out = tmp_path / "run"
    args = [f"loss.mine.type={USER_LOSS}", "loss.mine.scael=3"]
    assert main(["run", "--out", str(out), *args, *FAST]) == 2
    err = capsys.readouterr().err
    assert "scael" in err and "scale" in err
    assert not out.exists()


@pytest.mark.parametrize("name", ["loss", "acc"])
def test_a_term_cannot_be_named_like_a_logged_metric(name):
    """train_loss and train_acc are the run's own columns: a term of that name would overwrite them."""
    with pytest.raises(ConfigError, match="taken"):
        load_config(None, [f"loss.{name}.type=kd", f"loss.{name}.weight=0.5"])
