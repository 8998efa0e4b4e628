"""User models: what their forward may return (tensor, `.logits`, tuple, dict), a builder that
returns no Module, and where `package.module:function` is looked for."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from distill.cli import main
from distill.errors import DistillError
from distill.models import create_model
from distill.models.outputs import LogitsOnly, logits_of

NETS = '''
import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput


class Net(nn.Module):
    def __init__(self, in_shape, num_classes, style):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(in_shape).prod()), 32), nn.ReLU())
        self.head = nn.Linear(32, num_classes)
        self.style = style

    def forward(self, x):
        h = self.body(x)
        logits = self.head(h)
        if self.style == "hf":
            return SequenceClassifierOutput(logits=logits)
        if self.style == "tuple":
            return logits, h
        if self.style == "dict":
            return {"features": h, "logits": logits}
        if self.style == "features":
            return {"features": h}
        return logits


def build(in_shape, num_classes, style="tensor"):
    return Net(in_shape, num_classes, style)


def not_a_module(in_shape, num_classes):
    return "resnet"
'''


@pytest.fixture
def user_nets(tmp_path, monkeypatch):
    code = tmp_path / "code"
    (code / "usernets").mkdir(parents=True)
    (code / "usernets" / "__init__.py").write_text("")
    (code / "usernets" / "nets.py").write_text(textwrap.dedent(NETS))
    monkeypatch.syspath_prepend(str(code))
    yield
    for name in [m for m in sys.modules if m.startswith("usernets")]:
        del sys.modules[name]


def test_the_rule():
    t = torch.randn(2, 3)
    assert logits_of(t) is t
    assert logits_of(SequenceClassifierOutput(logits=t)) is t
    assert logits_of((t, torch.zeros(1))) is t
    assert logits_of([t]) is t
    assert logits_of({"features": torch.zeros(1), "logits": t}) is t
    for bad in ({"features": t}, "logits", (), ("x", t), None):
        with pytest.raises(DistillError, match="holds no logits tensor"):
            logits_of(bad, "student")


def test_logits_only_reduces_the_output():
    net = torch.nn.Linear(3, 2)
    wrapped = LogitsOnly(torch.nn.Sequential(net, torch.nn.Identity()))
    x = torch.randn(4, 3)
    assert torch.equal(wrapped(x), net(x))


@pytest.mark.parametrize("style", ["hf", "tuple", "dict"])
def test_run_eval_and_export_with_a_non_tensor_output(style, user_nets, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "--out", str(out), "--quiet", "--no-report", "train.epochs=2", "train.lr=0.01",
            "teacher.model=usernets.nets:build", f"teacher.kwargs.style={style}",
            "student.model=usernets.nets:build", f"student.kwargs.style={style}"]
    assert main(args) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"]["teacher"]["test_acc"] > 50  # it learned: 10 classes, chance is 10
    assert main(["eval", str(out), "--trust-code"]) == 0  # the folder names user code
    assert main(["export", str(out), "--format", "torchscript", "--trust-code"]) == 0
    exported = torch.jit.load(str(out / "export" / "model.torchscript.pt"))  # raw digits features in
    assert isinstance(exported(torch.zeros(2, 1, 8, 8)), torch.Tensor)


def test_a_forward_without_logits_is_a_clear_error(user_nets, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["run", "--out", str(out), "--quiet", "train.epochs=1",
               "student.model=usernets.nets:build", "student.kwargs.style=features"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "The student's forward returned a dict with keys ['features']" in err
    assert "Traceback" not in err


def test_a_builder_that_returns_no_module(user_nets):
    with pytest.raises(DistillError, match="returned a str, not a torch.nn.Module"):
        create_model("usernets.nets:not_a_module", 10, (1, 8, 8))


def test_code_paths_are_found_in_the_current_directory(tmp_path, monkeypatch):
    # The `distill` console script does not put the current directory on sys.path by itself.
    (tmp_path / "cwdnets.py").write_text(textwrap.dedent(NETS))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        model = create_model("cwdnets:build", 10, (1, 8, 8))
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    finally:
        sys.modules.pop("cwdnets", None)


def test_an_import_error_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DistillError) as e:
        create_model("nosuchpkg.nets:build", 10, (1, 8, 8))
    assert "PYTHONPATH" in str(e.value) and str(Path.cwd()) in str(e.value)
