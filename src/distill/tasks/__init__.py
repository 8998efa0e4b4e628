"""Kinds of run, by their config's `task:`. Each is a `contracts.Task`: a run, `eval`,
`export`, `report` and `--seeds` reach everything task-specific through it, so adding a kind of
run is one module here plus its config schema (see the README's "Architecture")."""

from __future__ import annotations

from pathlib import Path

from ..config import load_config
from ..contracts import Task
from ..run_reader import config_of
from .classification import ClassificationTask
from .language_model import LanguageModelTask
from .text_classification import TextClassificationTask

TASKS = {"classification": ClassificationTask, "language_model": LanguageModelTask,
         "text_classification": TextClassificationTask}


def make_task(cfg, trust_checkpoint: bool = False):
    """The Task of a validated run config; `trust_checkpoint` (--trust-checkpoint) lets it load
    pickled weights of a model folder."""
    return TASKS[cfg.task](cfg, trust_checkpoint)


def task_of_run(path: str | Path) -> Task:
    """The Task of a run folder, or of the folder a weights file of a run sits in, from its
    config.yaml. Reading a config imports none of the code it names: the task's load_run,
    evaluate_run and export refuse such a config unless the user trusts it (distill.trust)."""
    return make_task(load_config(config_of(path)))


def export_formats() -> dict[str, tuple[str, ...]]:
    """task name -> the `distill export --format` values its runs take."""
    return {name: task.export_formats for name, task in TASKS.items()}
