"""Reading a finished run folder back, whatever its task: its config (checked for code before
anything is built), summary and metrics, and which weights files it holds.

What is task-specific — rebuilding a stage's model and data — is each Task's `load_run`
(classifiers: distill.classifier_run; language models: distill.lm.tools); `eval`, `export`,
`report` and `--seeds` reach it through `distill.tasks.task_of_run`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from .config import RunConfig, load_config, parse_override
from .errors import DistillError
from .io import read_lines
from .stage_plan import all_stages
from .trust import NO_TRUST, Trust, require_trust

KEYS = ("best", "last")  # the validation-selected weights (<stage>.safetensors) and the last epoch's


def run_config(run_dir: str | Path, overrides: Sequence[str] = (), trust: Trust = NO_TRUST) -> RunConfig:
    """config.yaml of a run folder plus `overrides`; a config naming code is refused unless
    `trust.code` (distill.trust), before anything is built."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise DistillError(f"'{run_dir}' has no config.yaml; give a run folder written by `distill run`.")
    ignored = [text for text in overrides if parse_override(text)[0][0] != "data"]
    if ignored:  # a trained run is only read back: anything but the data would be ignored
        raise DistillError(f"{', '.join(ignored)} would be ignored: a finished run is evaluated with "
                           "the settings it trained with; only data.* overrides (the data to "
                           "evaluate on, e.g. data.path=other.npz) apply.")
    cfg = load_config(path, list(overrides))
    require_trust(cfg, run_dir, trust.code)
    return cfg


def read_run(run_dir: str | Path) -> tuple[RunConfig, dict, list[dict]]:
    """(config, summary, metrics.jsonl rows) of a finished run folder."""
    run_dir = Path(run_dir)
    for name in ("config.yaml", "summary.json"):
        if not (run_dir / name).is_file():
            raise DistillError(
                f"'{run_dir}' has no {name}, so it is not a finished run folder. "
                "Give the folder `distill run` wrote (it holds config.yaml and summary.json)."
            )
    cfg = load_config(run_dir / "config.yaml")
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = read_lines(run_dir / "metrics.jsonl")  # without a torn last line (a kill or a full disk mid-append)
    return cfg, summary, rows


def weights_file(run_dir: str | Path, stage: str, last: bool = False) -> Path | None:
    """RUN_DIR/<stage>[-last].safetensors, or None when the run saved no such weights."""
    path = Path(run_dir) / f"{stage}{'-last' if last else ''}.safetensors"
    return path if path.is_file() else None


def run_stages(run_dir: str | Path) -> list[str]:
    """Every stage a run may have recorded, in run order (distill.stage_plan.all_stages of its
    config.yaml; reading the config imports no code)."""
    return all_stages(load_config(Path(run_dir) / "config.yaml"))


def require_stage(run_dir: str | Path, stage: str, option: str = "--stage") -> None:
    """A DistillError naming the run's stages when `stage` is none of them (given as `option`)."""
    stages = run_stages(run_dir)
    if stage not in stages:
        raise DistillError(f"{option} {stage} is no stage of the run in '{run_dir}'; its stages are "
                           f"{', '.join(stages)}. Pick one of them.")


def eval_target(target: str | Path) -> tuple[Path, tuple[str, str] | None]:
    """(run folder, None) for a run folder; (its folder, (stage, "best"|"last")) for one of its
    <stage>[-last].safetensors files (any stage of the run: distill.stage_plan)."""
    target = Path(target)
    if target.is_dir():
        return target, None
    if not target.is_file():
        raise DistillError(f"'{target}' is neither a run folder nor a weights file.")
    stem = target.name.removesuffix(".safetensors")
    stage, key = (stem.removesuffix("-last"), "last") if stem.endswith("-last") else (stem, "best")
    if not target.name.endswith(".safetensors") or not (target.parent / "config.yaml").is_file():
        raise DistillError(
            f"Cannot tell which model '{target.name}' holds. Give a run folder, or one of its "
            "<stage>[-last].safetensors files (its config.yaml must sit beside it)."
        )
    stages = run_stages(target.parent)
    if stage not in stages:
        raise DistillError(
            f"Cannot tell which model '{target.name}' holds: '{stage}' is no stage of the run in "
            f"'{target.parent}'. Give the run folder, or one of its <stage>[-last].safetensors "
            f"files, for a stage among {', '.join(stages)}."
        )
    return target.parent, (stage, key)


def saved_models(run_dir: Path, only: tuple[str, str] | None = None) -> Iterator[tuple[str, str]]:
    """(stage, "best"|"last") of every weights file the run saved, in run order; `only`
    restricts it to one."""
    for stage in run_stages(run_dir):
        for key in KEYS:
            if (only is None or only == (stage, key)) and weights_file(run_dir, stage, key == "last"):
                yield stage, key


def config_of(path: str | Path) -> Path:
    """The config.yaml that describes `path`: a run folder's own, or the one beside a weights file."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not path.exists():
        raise DistillError(f"'{path}' is neither a run folder nor a weights file.")
    if not (folder / "config.yaml").is_file():
        seeds = " It holds --seeds runs: give one of its seed-<k>/ folders." if any(folder.glob("seed-*/config.yaml")) else ""
        raise DistillError(
            f"'{folder}' has no config.yaml, so it holds no run of `distill run`. Give a run folder "
            f"it wrote, or one of its <stage>.safetensors files.{seeds}"
        )
    return folder / "config.yaml"
