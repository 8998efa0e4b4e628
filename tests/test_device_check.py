"""train.device names a device this torch and machine lack: one paragraph, status 2, and no run
folder (so nothing blocks the rerun). Simulated with a CPU-only torch on any machine."""

from __future__ import annotations

import pytest
import torch

from distill.cli import main
from distill.errors import ConfigError
from distill.run_folder import MARKER, claim
from distill.runtime import resolve_device

FAST = ["--quiet", "train.epochs=1", "teacher.model=mlp", "teacher.kwargs.hidden=[16]"]


@pytest.fixture
def cpu_only_torch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def one_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def _refused(tmp_path, capsys, device: str, *extra: str) -> str:
    out = tmp_path / "r"
    assert main(["run", f"train.device={device}", "--out", str(out), *extra, *FAST]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err  # one paragraph
    assert not out.exists()
    return err


@pytest.mark.parametrize("seeds", [[], ["--seeds", "2"]])
def test_cuda_on_a_cpu_only_torch(tmp_path, capsys, cpu_only_torch, seeds):
    err = _refused(tmp_path, capsys, "cuda", *seeds)
    assert "train.device=cuda but this torch has no CUDA (torch.cuda.is_available() is False" in err
    assert "use train.device=cpu or auto, or install a CUDA build of torch" in err


@pytest.mark.parametrize("seeds", [[], ["--seeds", "2"]])
def test_mps_unavailable(tmp_path, capsys, cpu_only_torch, seeds):
    err = _refused(tmp_path, capsys, "mps", *seeds)
    assert "train.device=mps but this torch" in err and "torch.backends.mps.is_available() is False" in err
    assert "use train.device=cpu or auto" in err


@pytest.mark.parametrize("device", ["gpu0", "CUDA", "cuda:-1", "tpu"])
def test_not_a_device_name(tmp_path, capsys, device):
    err = _refused(tmp_path, capsys, device)
    assert f"train.device={device}" in err and "auto, cpu, cuda" in err


def test_cuda_index_past_the_gpus_present(tmp_path, capsys, one_gpu):
    err = _refused(tmp_path, capsys, "cuda:7", "--seeds", "2")
    assert "train.device=cuda:7 but this machine has 1 CUDA device(s) (cuda:0 to cuda:0)" in err


def test_resolve_device(cpu_only_torch, monkeypatch):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda")
    monkeypatch.setenv("WORLD_SIZE", "4")  # torchrun: 4 processes on this node, 2 GPUs
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("cuda") == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(ConfigError, match="one process per GPU"):
        resolve_device("auto")


def test_refused_run_writes_no_tensorboard_into_a_finished_folder(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    out = tmp_path / "done"
    claim(out, "run", "--out")  # distill's folder (a folder of the user's is refused before)
    (out / "summary.json").write_text("{}\n")
    assert main(["run", "--out", str(out), "log.tensorboard=true", *FAST]) == 2
    assert "finished run" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "summary.json"]
