"""Resume with new training settings: `distill run --resume RUN train.lr=1e-4`.

A diverged stage (NaN loss) keeps its last good checkpoint, but continuing it with the same
settings diverges again. Overrides of the schedule (`train.*`, `teacher.train.*`) restart, from
epoch 0, every stage whose resolved settings they change, and the stages that depend on it: a
new teacher means a new distilled student. The scratch and distilled students always share
`train`, so both restart together and the comparison stays paired. Stages the overrides do
not touch are kept.
"""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import POINTER, Checkpointer
from .config import RunConfig, load_config, stage_train, to_yaml
from .errors import DistillError
from .io import write_json, write_text
from .stage_plan import chain, is_teacher, members, peers, planned_stages

RESTARTABLE = ("train.", "teacher.train.")


def stages_to_restart(old: RunConfig, new: RunConfig) -> list[str]:
    """The stages, in run order, whose training settings differ, plus those that depend on
    them: a new teacher (or one of several) means a new ensemble and new links of the chain, a
    new link means new links after it, and the cohort's peers restart with the distill stage."""
    stages = planned_stages(old)
    redo = {s for s in stages if stage_train(old, s) != stage_train(new, s)}
    if any(is_teacher(s) for s in redo) and "distill" in old.stages:
        redo |= {"teacher"} if members(old) else set()
        redo |= set(chain(old))
    links = chain(old)
    for i, link in enumerate(links):
        if link in redo:
            redo |= set(links[i:])
    if "distill" in redo:
        redo |= set(peers(old))
    return [s for s in stages if s in redo]


def restart(run_dir: Path, overrides: list[str]) -> tuple[RunConfig, list[str]]:
    """Apply schedule `overrides` to an unfinished run folder: config.yaml rewritten, the
    affected stages' results, checkpoint and metrics lines dropped. Returns (config, stages)."""
    bad = [o for o in overrides if not o.startswith(RESTARTABLE)]
    if bad:
        raise DistillError(
            f"--resume takes only training-schedule overrides (train.*, teacher.train.*), which "
            f"restart the stages they change; got {', '.join(bad)}. For other changes start a new "
            "run with another --out."
        )
    if (run_dir / "summary.json").exists():
        raise DistillError(f"'{run_dir}' holds a finished run; start a new one with another --out "
                           "to train with other settings.")
    old = load_config(run_dir / "config.yaml")
    new = load_config(run_dir / "config.yaml", overrides)
    redo = stages_to_restart(old, new)
    if not redo:
        raise DistillError(f"The overrides {', '.join(overrides)} change no stage of '{run_dir}'; "
                           "resume without them.")
    _forget(run_dir, redo)
    write_text(run_dir / "config.yaml", to_yaml(new))
    return new, redo


def _forget(run_dir: Path, stages: list[str]) -> None:
    """Drop what the run folder holds of `stages`: results, checkpoint, metrics lines."""
    results_path = run_dir / "stages.json"
    if results_path.exists():
        results = json.loads(results_path.read_text())
        write_json(results_path, {k: v for k, v in results.items() if k not in stages})
    pointer = run_dir / POINTER
    if pointer.exists() and json.loads(pointer.read_text()).get("stage") in stages:
        Checkpointer.clear(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        kept = [line for line in metrics.read_text().splitlines()
                if line.strip() and _stage_of(line) not in stages]
        write_text(metrics, "".join(f"{line}\n" for line in kept))


def _stage_of(line: str) -> str | None:
    try:
        return json.loads(line).get("stage")
    except json.JSONDecodeError:  # a torn last line: dropped with the stages it may belong to
        return None


def restart_once(run_dir: Path, overrides: list[str], device: str) -> tuple[RunConfig, list[str]]:
    """`restart` under torchrun: rank 0 rewrites the folder and every process gets its answer.
    Each process restarting on its own would race: one reads the config another already
    rewrote ("change no stage"), or resumes a checkpoint another is deleting."""
    from .runtime import all_gather_objects, init_distributed, is_main, resolve_device, world_size

    if world_size() == 1:
        return restart(run_dir, overrides)
    init_distributed(resolve_device(device))
    outcome = None
    if is_main():
        try:
            outcome = restart(run_dir, overrides)
        except DistillError as e:
            outcome = e
    outcome = all_gather_objects(outcome)[0]
    if isinstance(outcome, DistillError):
        raise outcome
    return outcome

