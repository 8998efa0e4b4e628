"""Teacher checkpoints written by other toolkits load with weights_only=True: bare state dicts,
RepDistiller / mdistiller-style dicts nesting the weights under 'model' (or 'state_dict', 'net',
'model_state_dict'), and DataParallel / torch.compile key prefixes; the loader says what it
unwrapped, and a file that does not fit names the keys and shapes that differ."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from distill.cli import main
from distill.config import load_config
from distill.data import build_data
from distill.engine import evaluate
from distill.errors import DistillError
from distill.io import load_weights
from distill.models import create_model


def _resnet8(seed: int = 0, num_classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("resnet8", num_classes=num_classes, in_shape=(3, 32, 32))


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


def _optimizer_state(model: nn.Module) -> dict:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    return opt.state_dict()


def _load_into_fresh(path) -> tuple[nn.Module, str]:
    fresh = _resnet8(seed=1)
    return fresh, load_weights(fresh, path)


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".safetensors"])
def test_bare_state_dict(tmp_path, suffix):
    source = _resnet8()
    path = tmp_path / f"teacher{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:
        torch.save(source.state_dict(), path)
    assert not _same(source, _resnet8(seed=1))
    fresh, note = _load_into_fresh(path)
    assert _same(source, fresh)
    assert note.startswith(f"teacher{suffix}: ") and "plain state dict" in note
    assert "stripped" not in note and "under" not in note


def test_repdistiller_checkpoint(tmp_path):
    """RepDistiller: {'epoch', 'model', 'accuracy' (a tensor), 'optimizer'}."""
    source = _resnet8()
    path = tmp_path / "resnet8_best.pth"
    torch.save({"epoch": 240, "model": source.state_dict(), "accuracy": torch.tensor(72.5),
                "optimizer": _optimizer_state(_resnet8(seed=2))}, path)
    fresh, note = _load_into_fresh(path)
    assert _same(source, fresh)
    assert note.startswith("resnet8_best.pth: read the state dict under 'model'")
    assert "'epoch'" in note and "'optimizer'" in note  # the siblings it ignored


def test_repdistiller_checkpoint_with_plain_numbers(tmp_path):
    source = _resnet8()
    path = tmp_path / "teacher.pth"
    torch.save({"model": source.state_dict(), "epoch": 240, "accuracy": 72.5}, path)
    fresh, note = _load_into_fresh(path)
    assert _same(source, fresh)
    assert "under 'model'" in note


@pytest.mark.parametrize("key", ["state_dict", "net", "model_state_dict"])
def test_other_nesting_keys(tmp_path, key):
    source = _resnet8()
    path = tmp_path / "ckpt.pt"
    torch.save({key: source.state_dict(), "epoch": 3, "best_acc": 70.1,
                "optimizer": _optimizer_state(_resnet8(seed=2))}, path)
    fresh, note = _load_into_fresh(path)
    assert _same(source, fresh)
    assert f"under '{key}'" in note


@pytest.mark.parametrize("prefix, suffix", [("module.", ".pth"), ("module.", ".safetensors"),
                                            ("_orig_mod.", ".pt"), ("module._orig_mod.", ".pth"),
                                            ("model.", ".pt")])
def test_wrapper_prefixes_are_stripped(tmp_path, prefix, suffix):
    source = _resnet8()
    state = _prefixed(source.state_dict(), prefix)
    path = tmp_path / f"dp{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    fresh, note = _load_into_fresh(path)
    assert _same(source, fresh)
    assert f"stripped prefix '{prefix}'" in note


def test_dataparallel_inside_a_repdistiller_dict(tmp_path):
    source = _resnet8()
    path = tmp_path / "teacher.pth"
    torch.save({"model": _prefixed(source.state_dict(), "module."), "epoch": 240, "accuracy": 72.5}, path)
    fresh, note = _load_into_fresh(path)
    assert _same(source, fresh)
    assert note.startswith("teacher.pth: read the state dict under 'model'")
    assert "stripped prefix 'module.'" in note


class _Wrapper(nn.Module):
    """A model whose own parameters are legitimately named 'model.*'."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.model = nn.Linear(4, 3)


def test_own_model_prefix_is_kept(tmp_path):
    source = _Wrapper(0)
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)  # keys 'model.weight', 'model.bias'
    fresh = _Wrapper(1)
    note = load_weights(fresh, path)
    assert _same(source, fresh) and "stripped" not in note
    torch.save(_prefixed(source.state_dict(), "module."), path)  # DataParallel of that model
    fresh = _Wrapper(2)
    note = load_weights(fresh, path)
    assert _same(source, fresh) and "stripped prefix 'module.'" in note


def test_architecture_mismatch_names_keys_and_suggests_the_config(tmp_path):
    path = tmp_path / "resnet8.pth"
    torch.save({"model": _prefixed(_resnet8().state_dict(), "module."), "epoch": 240}, path)
    with pytest.raises(DistillError) as info:
        load_weights(create_model("resnet14", num_classes=10, in_shape=(3, 32, 32)), path)
    msg = str(info.value)
    assert "does not fit" in msg and "missing" in msg and "layer1.1.conv1.weight" in msg
    assert "teacher.model" in msg and "teacher.kwargs" in msg
    assert "under 'model'" in msg and "stripped prefix 'module.'" in msg  # what it read first
    assert "\n" not in msg


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    path = tmp_path / "resnet8-c100.pth"
    torch.save({"model": _resnet8(num_classes=100).state_dict(), "accuracy": 70.0}, path)
    with pytest.raises(DistillError) as info:
        load_weights(_resnet8(num_classes=10), path)
    msg = str(info.value)
    assert "fc.weight: file (100, 64) vs model (10, 64)" in msg
    assert "fc.bias: file (100,) vs model (10,)" in msg
    assert "teacher.kwargs" in msg


def test_a_file_without_tensors_says_what_it_holds(tmp_path):
    path = tmp_path / "log.pth"
    torch.save({"epoch": 240, "accuracy": 72.5, "optimizer": {"state": {}, "param_groups": []}}, path)
    with pytest.raises(DistillError) as info:
        load_weights(_resnet8(), path)
    msg = str(info.value)
    assert "holds no state dict of tensors" in msg
    assert "'epoch'" in msg and "'accuracy'" in msg  # the keys it found
    assert "'model'" in msg and "'state_dict'" in msg  # where it looked
    assert "torch.save(model.state_dict()" in msg


def test_numpy_scalars_need_trust_and_then_load(tmp_path):
    """weights_only=True refuses numpy scalars: the message says which global and how to go on."""
    source = _resnet8()
    path = tmp_path / "teacher.pth"
    torch.save({"model": source.state_dict(), "epoch": 240, "accuracy": np.float64(72.5)}, path)
    with pytest.raises(DistillError) as info:
        load_weights(_resnet8(seed=1), path)
    msg = str(info.value)
    assert "--trust-checkpoint" in msg and "numpy" in msg and "\x1b" not in msg
    fresh = _resnet8(seed=1)
    note = load_weights(fresh, path, trust=True)
    assert _same(source, fresh) and "under 'model'" in note


def test_distill_run_with_a_repdistiller_teacher(tmp_path, capsys):
    """The real path: `distill run` with the default digits teacher saved RepDistiller-style
    under DataParallel; the run says what it unwrapped and reports that teacher's accuracy."""
    torch.manual_seed(0)
    teacher = create_model("cnn", num_classes=10, in_shape=(1, 8, 8), channels=[64, 128], dropout=0.3)
    path = tmp_path / "teacher.pth"
    torch.save({"model": _prefixed(teacher.state_dict(), "module."), "epoch": 240,
                "accuracy": torch.tensor(72.5)}, path)
    out = tmp_path / "run"
    overrides = [f"teacher.checkpoint={path}", "stages=[distill]", "train.epochs=1", "data.batch_size=128"]
    assert main(["run", "--out", str(out), *overrides]) == 0
    printed = " ".join(capsys.readouterr().out.split())  # the console may wrap the line
    assert "teacher.pth: read the state dict under 'model'" in printed
    assert "stripped prefix 'module.'" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"]["teacher"]["checkpoint"] == str(path)
    data = build_data(load_config(out / "config.yaml").data)
    expected = evaluate(teacher.eval(), data.test, "cpu")["acc"]
    assert summary["stages"]["teacher"]["test_acc"] == pytest.approx(expected, abs=1e-9)
    assert (out / "report.md").is_file()  # the report loads the same file again
