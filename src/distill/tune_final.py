"""After a search: the best config as YAML, then test numbers for it and for the untuned config.

The search selected on validation only. Test accuracy of the best trial's own run would be one
draw of the seed noise, so the best config is re-run over --seeds seeds into OUT/best/ and the
untuned config over the same seeds into OUT/default/, each a --seeds folder (seed-<k>/ runs,
report.md, seeds.json). Seed k of both uses the same teacher (OUT/teachers/seed-<k>/, trained
once; seed <config seed> is the search's own), so default and tuned are paired per seed: the
difference of their distilled students' test numbers, and of their gains over scratch, is
computed seed by seed.
"""

from __future__ import annotations

import time
from pathlib import Path

from .config import to_yaml
from .errors import DistillError
from .io import write_json, write_text
from .markdown import json_safe
from .run_folder import claim
from .runtime import stop_between_runs
from .seeds import aggregate, describe, load_summary, write_seed_report
from .stages import run
from .tune_report import write_report
from .tune_space import apply_params
from .tune_state import SearchState

BEST_FILE = "best.json"  # in OUT/best/: which trial's config the seed runs there ran


def best_trial(search: SearchState):
    """The study's best trial (selection on the validation metric), or a DistillError."""
    try:
        return search.study.best_trial
    except ValueError:
        raise DistillError(
            f"No trial of the search in '{search.out}' finished with a value (all were pruned or "
            "diverged). Widen or move the space (e.g. a lower train.lr range), or run more trials "
            f"with distill tune --resume {search.out} --trials M."
        ) from None


def _best_folder(search: SearchState, number: int) -> Path:
    """OUT/best/, for this trial: a folder of an earlier best (a resume with more trials found a
    better one) is kept, renamed best-trial-<k>/, not deleted."""
    import json

    folder = search.out / "best"
    record = folder / BEST_FILE
    if record.is_file():
        old = json.loads(record.read_text()).get("trial")
        if old != number:
            folder.rename(search.out / f"best-trial-{old}")
    claim(folder, "seeds", "distill tune")
    write_json(folder / BEST_FILE, {"trial": number})
    return folder


def seed_set(search: SearchState, folder: Path, cfg, teachers: dict[int, str | None]) -> list[dict]:
    """`cfg` over the seeds into folder/seed-<k>/ (finished ones read back, an interrupted one
    continued), then the folder's seed report; the summaries, in seed order."""
    claim(folder, "seeds", "distill tune")
    stages = [s for s in ("scratch", "distill") if s in cfg.stages]
    dirs = []
    for seed, teacher in teachers.items():
        run_dir = folder / f"seed-{seed}"
        if not (run_dir / "summary.json").is_file():
            start = time.perf_counter()
            seed_cfg = apply_params(cfg, [], {}, search.overrides(seed, teacher, stages))
            run(seed_cfg, run_dir, quiet=True, resume=(run_dir / "config.yaml").is_file(),
                trust_checkpoint=search.trust)
            stop_between_runs()
            search.log(f"{folder.name}: seed {seed} done ({time.perf_counter() - start:.1f} s).")
        dirs.append(run_dir)
    write_seed_report(folder, dirs)
    return [load_summary(d) for d in dirs]


def _paired(tuned: list[dict], default: list[dict], metric: str) -> dict:
    """Per seed: tuned - default, for the distilled student's test metric and for the gain."""
    key = f"test_{metric}"
    out = {"distill": describe([t["stages"]["distill"][key] - d["stages"]["distill"][key]
                                for t, d in zip(tuned, default, strict=True)])}
    if all("scratch" in s["stages"] for s in (*tuned, *default)):
        out["gain"] = describe([
            (t["stages"]["distill"][key] - t["stages"]["scratch"][key])
            - (d["stages"]["distill"][key] - d["stages"]["scratch"][key])
            for t, d in zip(tuned, default, strict=True)])
    return out


def finish(search: SearchState) -> dict:
    """best.yaml, the seed runs of the best and the default config, tune.json and tune.md."""

    start = time.perf_counter()
    best = best_trial(search)
    best_cfg = apply_params(search.cfg, search.s.space, best.params)
    header = (f"# distill tune: the best of {len(search.study.trials)} trials (trial {best.number}, "
              f"val_{search.metric} {best.value:.6g}), selected on validation.\n")
    write_text(search.out / "best.yaml", header + to_yaml(best_cfg))
    search.log(f"Best trial {best.number}: val_{search.metric} {best.value:.4g}; config in "
               f"{search.out / 'best.yaml'}. Running it and the default over {search.s.seeds} seed(s).")
    seeds = range(search.cfg.seed, search.cfg.seed + search.s.seeds)
    teachers = {s: search.teacher(s) for s in seeds}
    tuned = seed_set(search, _best_folder(search, best.number), best_cfg, teachers)
    default = seed_set(search, search.out / "default", search.cfg, teachers)
    result = {
        "schema": 1,
        "metric": search.metric,
        "lower_is_better": search.selection.lower_is_better,
        "best": {"trial": best.number, "value": best.value, "params": best.params},
        "tuned": aggregate(tuned),
        "default": aggregate(default),
        "paired": _paired(tuned, default, search.metric),
        "seconds": {"trials": sum(t.user_attrs.get("seconds", 0.0) for t in search.study.trials),
                    "final": time.perf_counter() - start},
    }
    result = json_safe(result)
    write_report(search, result)
    return result
