"""Kinds of run, by their config's `task:`. Each is a `contracts.Task`: a run, `eval`,
`export`, `report` and `--seeds` reach everything task-specific through it, so adding a kind of
run is one module here plus its config schema (see the README's "Architecture")."""

from __future__ import annotations

from .classification import ClassificationTask
from .language_model import LanguageModelTask

TASKS = {"classification": ClassificationTask, "language_model": LanguageModelTask}


def make_task(cfg):
    """The Task of a validated run config."""
    return TASKS[cfg.task](cfg)
