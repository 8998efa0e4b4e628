"""Checkpoints: exact resume after SIGKILL or SIGTERM, atomicity, NaN stops, safe loading."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from distill.checkpoint import POINTER, Checkpointer
from distill.cli import main
from distill.errors import DistillError
from distill.io import load_weights, read_state_dict
from distill.run_folder import claim

# cache=disk: the resumed run must get the very teacher targets the uninterrupted run used. The
# default in-memory cache starts empty after a restart, so the resumed run would recompute
# targets that the uninterrupted run took from its cache, computed in other batches (other row
# positions; 15 rows for the last batch instead of 64), which BLAS may round differently on
# some CPUs. The disk cache survives the stop, so the weights stay comparable bit for bit.
ARGS = ["--quiet", "train.epochs=12", "train.deterministic=true", "teacher.model=mlp", "teacher.kwargs.hidden=[64]",
        "stages=[teacher,distill]", "train.threads=1", "cache=disk"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(["run", "--out", str(out), *ARGS]) == 0
    return out


def _start(out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "distill", "run", "--out", str(out), *ARGS]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(out: Path, stage: str, proc: subprocess.Popen, timeout=180.0):
    pointer, deadline = out / POINTER, time.time() + timeout
    while time.time() < deadline:
        try:  # a finished stage removes its pointer: it can vanish between two reads
            if json.loads(pointer.read_text())["stage"] == stage:
                return
        except FileNotFoundError:
            pass
        assert proc.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.01)
    raise AssertionError("no checkpoint appeared")


def _same_weights(a: Path, b: Path, stem: str) -> bool:
    return (a / f"{stem}.safetensors").read_bytes() == (b / f"{stem}.safetensors").read_bytes()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_then_resumed_run_equals_uninterrupted(tmp_path, reference_run, sig):
    out = tmp_path / "run"
    proc = _start(out)
    _wait_for_checkpoint(out, "distill", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGTERM:  # a clean stop: checkpoint, message, status 130
        assert proc.returncode == 130, err
        assert f"distill run --resume {out}" in err and "Traceback" not in err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()
    assert main(["run", "--quiet", "--resume", str(out)]) == 0
    for stem in ("teacher", "distill", "distill-last"):
        assert _same_weights(reference_run, out, stem), stem
    # metrics.jsonl holds each epoch once, as in the uninterrupted run
    epochs = [(r["stage"], r["epoch"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
    assert epochs == [(r["stage"], r["epoch"]) for r in map(json.loads, (reference_run / "metrics.jsonl").read_text().splitlines())]
    assert not (out / POINTER).exists()  # the finished stage's checkpoint was cleared


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)


def _save(ckpt: Checkpointer, epoch: int):
    from distill.checkpoint import TrainState
    from distill.distiller import Distiller

    model = Distiller(None, _Tiny())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ckpt.save(model, opt, sched, TrainState(epoch=epoch), model.state_dict())


def test_kill_during_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path, "distill")
    _save(ckpt, epoch=1)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies between the weights and the state file

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        _save(ckpt, epoch=2)
    monkeypatch.undo()
    loaded = ckpt.load()
    assert loaded["state"].epoch == 1
    assert not list(tmp_path.glob("*.tmp"))  # no half-written temporaries left behind


def test_nan_loss_stops_with_the_step_and_term(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--out", str(out), "--quiet", "train.epochs=3", "train.lr=1e30",
                 "teacher.model=mlp", "teacher.kwargs.hidden=[32]", "stages=[teacher]", "train.optimizer=sgd",
                 "train.momentum=0"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "non-finite" in err and "step" in err and "'ce'" in err and "Traceback" not in err
    assert (out / "config.yaml").exists()


def test_pickled_code_is_refused_unless_trusted(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(_Tiny(), path)  # a whole pickled module: needs code to unpickle
    with pytest.raises(DistillError, match="--trust-checkpoint"):
        read_state_dict(path)
    model = _Tiny()
    load_weights(model, path, trust=True)


def test_truncated_and_mismatched_checkpoints(tmp_path):
    from safetensors.torch import save_file

    good = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in _Tiny().state_dict().items()}, str(good))
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(good.read_bytes()[:-7])
    with pytest.raises(DistillError, match="corrupt or truncated"):
        load_weights(_Tiny(), bad)
    wrong = _Tiny()
    wrong.fc = nn.Linear(3, 5)
    with pytest.raises(DistillError, match=r"fc.weight: file \(2, 3\) vs model \(5, 3\)"):
        load_weights(wrong, good)


def test_export_formats_match_torch(tmp_path, reference_run):
    pytest.importorskip("onnxruntime")
    for fmt, model in (("onnx", "model.onnx"), ("torchscript", "model.torchscript.pt")):
        out = tmp_path / fmt  # an export folder: the model, labels.json, preprocess.json
        assert main(["export", str(reference_run), "--format", fmt, "--out", str(out)]) == 0
        assert (out / model).stat().st_size > 0 and (out / "labels.json").is_file()
    out = tmp_path / "student.safetensors"  # the weights: one file, as before
    assert main(["export", str(reference_run), "--format", "safetensors", "--out", str(out)]) == 0
    assert out.stat().st_size > 0


def test_export_without_onnxruntime_says_how_to_install(tmp_path, reference_run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    assert main(["export", str(reference_run), "--format", "onnx", "--out", str(tmp_path / "m")]) == 2
    assert "pip install 'distill[export]'" in capsys.readouterr().err


def test_resume_refusals(tmp_path, reference_run, capsys):
    assert main(["run", "--quiet", "--resume", str(reference_run)]) == 2
    err = capsys.readouterr().err
    assert "finished run" in err and "nothing to resume" in err and "--out, or delete" not in err
    assert main(["run", "--quiet", "--resume", str(tmp_path)]) == 2
    assert "no run to resume" in capsys.readouterr().err
    claim(tmp_path / "half", "run", "--out")  # a folder distill made (a user's is refused first)
    (tmp_path / "half" / "config.yaml").write_text("name: x\n")
    assert main(["run", "--quiet", "--out", str(tmp_path / "half")]) == 2
    assert "--resume" in capsys.readouterr().err
