"""Helpers shared by the benchmark scripts: machine and git provenance, mean ± std."""

from __future__ import annotations

import hashlib
import math
import os
import platform
import statistics
import subprocess
from pathlib import Path

import torch

import distill

ROOT = Path(__file__).resolve().parents[1]


def machine_info() -> dict:
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "distill": distill.__version__,
        "cuda_available": torch.cuda.is_available(),
    }


def git_state() -> dict:
    """The commit, and whether (and how) the tracked files differ from it."""

    def git(*args):
        try:
            out = subprocess.run(
                ["git", *args], capture_output=True, text=True, timeout=10, cwd=ROOT
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    commit, diff = git("rev-parse", "HEAD"), git("diff", "HEAD")
    return {
        "commit": commit.strip() if commit else None,
        "dirty": bool(diff) if diff is not None else None,
        # identifies the uncommitted changes the numbers were measured with
        "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
        "diff_files": (git("diff", "HEAD", "--name-only") or "").split() if diff else [],
    }


def mean_std(values: list[float]) -> dict:
    n = len(values)
    return {
        "mean": statistics.fmean(values) if n else None,
        "std": statistics.stdev(values) if n > 1 else None,  # sample std (n - 1)
        "n": n,
    }


def fmt(stat: dict | None, signed: bool = False) -> str:
    if not stat or stat["mean"] is None:
        return "-"
    sign = "+" if signed else ""
    std = "n/a" if stat["std"] is None or math.isnan(stat["std"]) else f"{stat['std']:.2f}"
    return f"{stat['mean']:{sign}.2f} ± {std}"
