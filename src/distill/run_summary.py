"""What a run writes about itself beyond its stages' files: the run folder's default name, the
schedule line it prints first, and summary.json's content (the stages' records, the gain, the
data and the environment)."""

from __future__ import annotations

import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .config import RunConfig, stage_train
from .runtime import world_size
from .schedule import Every
from .stage_plan import STUDENTS, has_teacher_stage, members, spec_of
from .version import __version__


def default_run_dir(cfg: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.name}-{stamp}"


def _environment() -> dict:
    try:
        git = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        git = None
    return {
        "distill": __version__, "torch": torch.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "platform": platform.platform(), "git": git,
    }


def _length(train) -> str:
    """How long a stage trains and, when not every epoch, how often it is validated."""
    n, unit = (train.max_steps, "step") if train.max_steps is not None else (train.epochs, "epoch")
    every = "" if train.eval_every == Every(1, "epoch") else f", validated every {train.eval_every}"
    return f"{n} {unit}{'s' if n != 1 else ''}{every}"


def data_id(cfg: RunConfig, sha: str | None) -> tuple[str, str] | None:
    """(fingerprint, where the data come from): what checkpoints carry to refuse other data."""
    if not sha:
        return None
    return sha, f"data.path '{cfg.data.path}'" if cfg.data.path else f"data.name={cfg.data.name}"


def schedule_line(cfg: RunConfig, task) -> str:
    """Each stage's resolved length (epochs or max_steps) and learning rate: `teacher.train`
    overrides `train` for the teacher, which a user who set train.epochs alone should see."""
    parts = []
    trained = [t for t in members(cfg) if not spec_of(cfg, t).checkpoint] or ["teacher"]
    if "teacher" in cfg.stages and has_teacher_stage(cfg) and not task.pretrained_teacher():
        for stage in trained:
            t, spec = stage_train(cfg, stage), spec_of(cfg, stage)
            key = "teacher.train" if stage == "teacher" else f"teachers[{stage.removeprefix('teacher-')}].train"
            own = f" ({key} sets {', '.join(sorted(spec.train))})" if spec.train else ""
            parts.append(f"{stage} {_length(t)}, {t.optimizer} lr {t.lr:g}{own}")
    students = [s for s in STUDENTS if s in cfg.stages]
    if students:
        t = cfg.train
        parts.append(f"{' and '.join(students)} {_length(t)}, {t.optimizer} lr {t.lr:g}")
    return f"Schedule: {'; '.join(parts)}."


def summarize(cfg: RunConfig, task, results: dict, data, device) -> dict:
    """summary.json's content: the stages' records, the distilled-minus-scratch gain, the data and
    the environment (`run` adds the wall time)."""
    stages, p = results, task.selection.metric
    gain = None
    if "scratch" in stages and "distill" in stages:
        gain = {
            key: stages["distill"][key] - stages["scratch"][key]
            for key in (f"test_{p}", f"val_{p}", f"last_test_{p}")
        }
    return {
        "schema": 1,
        "name": cfg.name,
        "seed": cfg.seed,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "processes": world_size(),
        "precision": cfg.train.precision,
        "task": cfg.task,
        "primary": {"metric": p, "lower_is_better": task.selection.lower_is_better},
        "data": {"name": cfg.data.name, **task.data_summary(data)},
        "stages": stages,
        "gain": gain,
        "environment": _environment(),
    }
