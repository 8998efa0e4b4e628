"""Hostile input to layers, user models and the Python API (issue 14, items 6b and 7): each
case ends in one clear error naming the fix, and layer mistakes are caught before any stage
trains (the preflight runs one distill step per term on fresh models)."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from distill import KD, Distiller, fit, kd_loss, train_knowledge_distillation
from distill.cli import main
from distill.config import TrainConfig
from distill.errors import DistillError

FAST = ["--quiet", "train.epochs=1", "data.batch_size=256"]

USER_MODELS = '''
import torch
from torch import nn

class Reshape(nn.Module):
    def forward(self, x):
        return x.reshape(-1, 4)  # (N, 64) -> (16 N, 4): the batch dimension changes

class Odd(nn.Module):
    def __init__(self, num_classes, mode):
        super().__init__()
        self.flatten, self.reshape = nn.Flatten(), Reshape()
        self.unused = nn.Linear(64, 8)
        self.head = nn.Linear(64, num_classes)
        self.mode = mode

    def forward(self, x):
        x = self.flatten(x)
        self.reshape(x)
        if self.mode == "raises":
            raise ValueError("no weights loaded")
        if self.mode == "keyword":
            return self.head(input=x)
        out = self.head(x)
        if self.mode == "integer":
            return out.long()
        if self.mode == "nan":
            return out * float("nan")
        return out

def odd(in_shape, num_classes, mode="ok"):
    return Odd(num_classes, mode)
'''


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    (tmp_path / "hostile_models.py").write_text(USER_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sys.modules.pop("hostile_models", None)


def _run(tmp_path, capsys, args):
    out = tmp_path / "run"
    code = main(["run", "--out", str(out), *FAST, *args])
    err = capsys.readouterr().err
    return code, err, out


def _term(kind, student, teacher):
    return [f"loss.hint.type={kind}", f"loss.hint.student={student}", f"loss.hint.teacher={teacher}",
            "loss.hint.weight=1"]


def test_bad_fitnet_pair_is_caught_before_the_teacher_trains(tmp_path, capsys):
    code, err, out = _run(tmp_path, capsys, ["teacher.model=cnn", "teacher.kwargs={}", "student.model=mlp",
                                             "student.kwargs.hidden=[16]", *_term("fitnet", "hidden.0", "layer1")])
    assert code == 2, err
    assert not (out / "teacher.safetensors").exists()
    assert "loss.hint" in err and "FitNet" in err and "(2, 16)" in err and "(2, 32, 4, 4)" in err
    assert "Traceback" not in err


ODD = ["teacher.model=mlp", "teacher.kwargs.hidden=[16]", "student.model=hostile_models:odd", "student.kwargs={}"]

LAYER_CASES = [
    # (id, args, substrings of the message)
    ("at 2-D vs 4-D", ["teacher.model=cnn", "teacher.kwargs={}", "student.model=mlp", "student.kwargs.hidden=[16]",
                       *_term("at", "hidden.0", "layer1")], ["loss.hint", "at_loss needs", "(2, 16)"]),
    ("vid 2-D vs 4-D", ["teacher.model=cnn", "teacher.kwargs={}", "student.model=mlp", "student.kwargs.hidden=[16]",
                        *_term("vid", "hidden.0", "layer1")], ["loss.hint", "VID needs"]),
    ("sp batch dims differ", [*ODD, *_term("sp", "reshape", "hidden.0")], ["loss.hint", "batches differ", "(32, 4)"]),
    ("crd batch dims differ", [*ODD, *_term("crd", "reshape", "hidden.0")], ["loss.hint", "CRD", "(32, 4)"]),
    ("module never runs", [*ODD, *_term("fitnet", "unused", "hidden.0")], ["loss.hint", "'unused' did not run"]),
    ("':input' of a keyword call", [*ODD, "student.kwargs.mode=keyword", *_term("fitnet", "head:input", "hidden.0")],
     ["loss.hint", "IndexError", "positional input"]),
]


@pytest.mark.parametrize("args,expected", [c[1:] for c in LAYER_CASES], ids=[c[0] for c in LAYER_CASES])
def test_layer_mistakes_are_caught_before_training(tmp_path, capsys, user_models, args, expected):
    code, err, out = _run(tmp_path, capsys, args)
    assert code == 2, err
    assert not (out / "teacher.safetensors").exists()
    assert "Traceback" not in err
    for text in expected:
        assert text in err, err


MODEL_CASES = [
    ("student forward raises", [*ODD, "student.kwargs.mode=raises"], ["The student", "ValueError: no weights loaded"]),
    ("teacher forward raises", ["teacher.model=hostile_models:odd", "teacher.kwargs.mode=raises"],
     ["The teacher", "ValueError: no weights loaded"]),
    ("integer logits", [*ODD, "student.kwargs.mode=integer"], ["The student", "torch.int64", "floating point"]),
]


@pytest.mark.parametrize("args,expected", [c[1:] for c in MODEL_CASES], ids=[c[0] for c in MODEL_CASES])
def test_user_model_forward_errors_are_clear(tmp_path, capsys, user_models, args, expected):
    code, err, out = _run(tmp_path, capsys, args)
    assert code == 2, err
    assert "Traceback" not in err and not (out / "teacher.safetensors").exists()
    for text in expected:
        assert text in err, err


def test_nan_teacher_checkpoint_is_blamed_on_the_teacher(tmp_path, capsys):
    from distill.models import create_model

    teacher = create_model("mlp", 10, (1, 8, 8), hidden=[16])
    state = {k: v.contiguous() for k, v in teacher.state_dict().items()}
    state["head.weight"][0, 0] = float("nan")
    save_file(state, str(tmp_path / "t.safetensors"))
    code, err, _ = _run(tmp_path, capsys, ["teacher.model=mlp", "teacher.kwargs.hidden=[16]", "stages=[distill]",
                                           f"teacher.checkpoint={tmp_path / 't.safetensors'}"])
    assert code == 2, err
    assert "teacher's logits contain NaN/Inf" in err and "teacher checkpoint" in err, err
    assert "Lower train.lr" not in err


# --- the Python API ------------------------------------------------------------------------

def _data(n=8, classes=3, nan=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    if nan:
        x[1, 2] = float("nan")
    return TensorDataset(x, torch.arange(n) % classes)


def _mlp(classes=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, classes))


class _NaNOut(nn.Module):
    def forward(self, x):
        return torch.full((len(x), 3), float("nan"))


class _NaNStudent(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _mlp(seed=1)

    def forward(self, x):
        return self.net(x) * float("nan")


class _InfTerm(nn.Module):
    def forward(self, student, teacher, batch):
        return student.logits.sum() * 0 + float("inf")


def _fit(distiller, loader, epochs=1):
    return fit(distiller, loader, loader, TrainConfig(epochs=epochs), "cpu")


@pytest.mark.parametrize("case,expected", [
    ("nan teacher", "teacher's logits contain NaN/Inf"),
    ("nan inputs", "inputs contain NaN/Inf: check the data"),
    ("nan student forward", "student's logits are NaN/Inf before any update"),
    ("inf term", "loss term itself"),
])
def test_non_finite_loss_names_its_source(case, expected):
    teacher, student, terms = _mlp(), _mlp(seed=1), {"kd": (KD(T=2.0), 1.0)}
    data = _data(nan=case == "nan inputs")
    if case == "nan teacher":
        teacher = _NaNOut()
    if case == "nan student forward":
        student = _NaNStudent()
    if case == "inf term":
        terms = {"bad": (_InfTerm(), 1.0)}
    with pytest.raises(DistillError, match="non-finite") as e:
        _fit(Distiller(teacher, student, terms), DataLoader(data, batch_size=4))
    assert expected in str(e.value)


class _Dicts(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"x": torch.randn(4), "y": i % 3}


def _tutorial(loader, teacher=None, T=2.0, w=(0.25, 0.75), epochs=1):
    return train_knowledge_distillation(teacher or _mlp(), _mlp(seed=1), loader, epochs, 1e-3, T, w[0], w[1], "cpu")


API_CASES = [
    ("fit: loader of dicts", lambda: _fit(Distiller(_mlp(), _mlp(), {"kd": (KD(), 1.0)}), DataLoader(_Dicts(), 2)),
     "yielded a dict with keys ['x', 'y']"),
    ("fit: empty loader", lambda: _fit(Distiller(_mlp(), _mlp(), {"kd": (KD(), 1.0)}), []), "train_loader is empty"),
    ("fit: class counts differ", lambda: _fit(Distiller(_mlp(5), _mlp(3), {"kd": (KD(), 1.0)}), DataLoader(_data(), 4)),
     "must output the same number of classes"),
    ("Distiller: NaN weight", lambda: Distiller(_mlp(), _mlp(), {"kd": (KD(), float("nan"))}), "finite number"),
    ("Distiller: NaN ce_weight", lambda: Distiller(_mlp(), _mlp(), {}, ce_weight=math.nan), "ce_weight"),
    ("Distiller: term without weight", lambda: Distiller(_mlp(), _mlp(), {"kd": KD()}), "(loss_module, weight) pair"),
    ("Distiller: student not a module", lambda: Distiller(_mlp(), "resnet20"), "student must be a torch.nn.Module"),
    ("tutorial: loader of dicts", lambda: _tutorial(DataLoader(_Dicts(), 2)), "yielded a dict"),
    ("tutorial: empty loader", lambda: _tutorial([]), "train_loader is empty"),
    ("tutorial: T=0", lambda: _tutorial(DataLoader(_data(), 4), T=0), "T must be a finite number > 0"),
    ("tutorial: T<0", lambda: _tutorial(DataLoader(_data(), 4), T=-2.0), "T must be a finite number > 0"),
    ("tutorial: NaN weight", lambda: _tutorial(DataLoader(_data(), 4), w=(math.nan, 0.75)), "soft_target_loss_weight"),
    ("tutorial: class counts differ", lambda: _tutorial(DataLoader(_data(), 4), teacher=_mlp(5)),
     "must output the same number of classes"),
    ("tutorial: epochs=0", lambda: _tutorial(DataLoader(_data(), 4), epochs=0), "epochs must be an integer >= 1"),
    ("kd_loss: T=0", lambda: kd_loss(torch.randn(2, 3), torch.randn(2, 3), 0.0), "T must be > 0"),
    ("kd_loss: T=NaN", lambda: kd_loss(torch.randn(2, 3), torch.randn(2, 3), math.nan), "T must be > 0"),
    ("kd_loss: class counts differ", lambda: kd_loss(torch.randn(2, 3), torch.randn(2, 5), 4.0), "differ in shape"),
    ("kd_loss: integer logits", lambda: kd_loss(torch.randn(2, 3), torch.ones(2, 3, dtype=torch.long), 4.0),
     "floating-point tensor"),
    ("KD: T=inf", lambda: KD(T=math.inf), "T must be > 0"),
]


@pytest.mark.parametrize("call,expected", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_python_api_wrong_arguments_are_clear(call, expected):
    torch.set_num_threads(1)
    with pytest.raises((DistillError, ValueError)) as e:
        call()
    assert expected in str(e.value)
