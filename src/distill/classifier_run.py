"""A classification run rebuilt from its folder: the data (the same split: it depends on
data.split_seed only) and each stage's model with its weights.

`load_run` is the one implementation that `distill eval`, `export` and `report` share (they
reach it through `ClassificationTask.load_run`); report.py evaluates and times what it returns.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from .config import BUILT_IN_DATA, RunConfig, load_config, parse_override
from .data import Data, build_data, fingerprint
from .ensemble import Ensemble
from .errors import DistillError
from .io import load_weights
from .models import create_model
from .models.hf import is_hf_folder
from .run_reader import run_config, weights_file
from .stage_plan import ensemble_T, is_teacher, members, spec_of
from .trust import NO_TRUST, Trust

TASK = "classification"
CLASSIFIER_TASKS = ("classification", "text_classification")  # what these functions rebuild


def build_classifier_data(cfg: RunConfig, seed: int, classes: list[str] | None = None) -> Data:
    """The Data of a classifier run's config: images or features, or token ids for text, whose
    labels are looked up in `classes` when given (a run's own, for other data of its classes)."""
    if cfg.task == "text_classification":
        from .text.data import build_text_data  # only text runs need the tokenizers

        return build_text_data(cfg.data, seed, classes)
    return build_data(cfg.data, seed=seed, classes=classes)


def create_classifier(cfg: RunConfig, role: str, data: Data, trust_checkpoint: bool = False) -> nn.Module:
    """The freshly built model of `role` (teacher, student, or any stage of the run:
    distill.stage_plan), for `data` (classes, input shape; for text the tokenizer's vocabulary
    and pad id, recorded in data.stats). With several teachers, the teacher is their Ensemble."""
    if role == "teacher" and members(cfg):
        built = {t.name: create_classifier(cfg, f"teacher-{t.name}", data, trust_checkpoint) for t in cfg.teachers}
        return Ensemble(built, {t.name: t.weight for t in cfg.teachers}, ensemble_T(cfg))
    spec = spec_of(cfg, role)
    if cfg.task == "text_classification":
        from .text.models import create_text_model

        s = data.stats
        section = "teacher" if is_teacher(role) else "student"  # the config section errors name
        return create_text_model(spec, data.num_classes, s["vocab_size"], s["pad_id"], s["max_length"], section,
                                 trust_checkpoint, s.get("tokenizer_source"))
    return create_model(spec.model, data.num_classes, data.in_shape, trust_checkpoint=trust_checkpoint, **spec.kwargs)


def rebuild(run_dir: str | Path, overrides: Sequence[str] = (), trust: Trust = NO_TRUST) -> tuple[RunConfig, Data]:
    """(config, Data) of a run folder: config.yaml plus `overrides`, data rebuilt from it. A
    config naming code is refused unless `trust.code` (distill.trust), before anything is built."""
    cfg = run_config(run_dir, overrides, trust)
    if cfg.task not in CLASSIFIER_TASKS:
        raise DistillError(
            f"'{run_dir}' is a task={cfg.task} run, and these functions rebuild classifiers. Use "
            f"distill.tasks.task_of_run('{run_dir}') (its load_run, evaluate_run, export and "
            "write_report), or `distill eval RUN`, `distill export RUN` and `distill report RUN`, "
            "which pick the run's task themselves."
        )
    data = build_classifier_data(cfg, cfg.seed, _run_classes(Path(run_dir)) if overrides else None)
    _check_same_data(Path(run_dir), cfg, data, overrides)
    return cfg, data


def _run_classes(run_dir: Path) -> list[str] | None:
    """The class names a run recorded (summary.json), or None for runs that record none."""
    summary = run_dir / "summary.json"
    names = json.loads(summary.read_text()).get("data", {}).get("class_names") if summary.is_file() else None
    return names if isinstance(names, list) and all(isinstance(n, str) for n in names) else None


def _check_same_data(run_dir: Path, cfg: RunConfig, data: Data, overrides: Sequence[str]) -> None:
    """Warn when the files behind a run's data changed since it trained (unless the caller
    asked for other data): its numbers would no longer describe the run."""
    summary = run_dir / "summary.json"
    recorded = json.loads(summary.read_text()).get("data", {}).get("sha256") if summary.is_file() else None
    if recorded and not any(o.startswith("data.") for o in overrides) and fingerprint(data) != recorded:
        print(f"warning: the data of '{run_dir}' ({cfg.data.name} at {cfg.data.path}) differ from "
              "what the run trained on; the results describe the data as they are now.", file=sys.stderr)


def weights_of(run_dir: str | Path, cfg: RunConfig, stage: str, last: bool = False) -> Path | None:
    """The weights of a stage: RUN_DIR/<stage>[-last].safetensors, or for a teacher loaded
    from teacher.checkpoint (no teacher stage trained) that checkpoint; None when there are none."""
    path = weights_file(run_dir, stage, last)
    if path is not None or last or not is_teacher(stage) or (stage == "teacher" and members(cfg)):
        return path
    spec = spec_of(cfg, stage)  # a teacher loaded, not trained: its checkpoint or its folder
    if spec.checkpoint:
        checkpoint = Path(spec.checkpoint)
        return checkpoint if checkpoint.is_file() else None
    if is_hf_folder(spec.model):
        return Path(spec.model)  # a save_pretrained teacher used as it is: its folder
    return None


def load_run(run_dir: str | Path, stage: str, trust: Trust = NO_TRUST, data: Data | None = None,
             last: bool = False) -> tuple[nn.Module, Data]:
    """(the stage's model in eval mode with its validation-selected weights, or the last
    epoch's with `last`; the run's Data). `data` reuses data rebuilt before (or other data of
    the same shape and classes, e.g. `rebuild(run_dir, ["data.path=..."])`)."""
    run_dir = Path(run_dir)
    cfg, data = rebuild(run_dir, trust=trust) if data is None else (run_config(run_dir, trust=trust), data)
    path = weights_of(run_dir, cfg, stage, last)
    if path is None:
        raise DistillError(f"'{run_dir}' has no finished '{stage}' stage "
                           f"({stage}{'-last' if last else ''}.safetensors is missing); pick another stage.")
    model = create_classifier(cfg, stage, data, trust.checkpoint)
    if not path.is_dir():  # a teacher folder's weights came with create_classifier
        load_weights(model, path, trust=trust.checkpoint)  # teacher.checkpoint may be a pickle
    return model.eval(), data


def refuse_ignored_path(run_dir: Path, target: str | Path, overrides: Sequence[str]) -> None:
    """`distill eval RUN --data PATH` on a run of the built-in data (which reads no files): say
    so and how to name the data's kind, instead of evaluating the built-in data again."""
    given = dict((".".join(k), v) for k, v in map(parse_override, overrides))
    if "data.path" not in given or not (run_dir / "config.yaml").is_file():
        return
    name = given.get("data.name", load_config(run_dir / "config.yaml").data.name)
    if name == BUILT_IN_DATA[TASK]:
        path = given["data.path"]
        raise DistillError(
            f"This run's data is the built-in {name} (data.name={name}), which reads no files, so "
            f"--data {path} would be ignored. To evaluate on other data, give its kind too: "
            f"distill eval {target} --data {path} data.name=npz (or csv, folder, mnist, "
            "cifar10, ...); its inputs must have the run's shape and classes."
        )
