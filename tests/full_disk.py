"""Shared by the torn-file and kill tests: a tiny resumable run, stopped by a full disk."""

from __future__ import annotations

import errno
from pathlib import Path

import distill.run_files
from distill.cli import main

TINY = ["train.epochs=3", "teacher.model=mlp", "teacher.kwargs.hidden=[16]", "data.batch_size=256",
        "--quiet", "--no-report"]
RESUME = ["--quiet", "--no-report"]


def interrupted(out: Path, monkeypatch, extra=()) -> None:
    """A run stopped by a full disk after the distill stage's last checkpoint (exit 2)."""
    real = distill.run_files.save_weights

    def full(module, path):
        if Path(path).name == "distill-last.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(module, path)

    with monkeypatch.context() as m:
        m.setattr(distill.run_files, "save_weights", full)
        assert main(["run", "--out", str(out), *TINY, *extra]) == 2
    assert (out / "checkpoint.json").is_file()
