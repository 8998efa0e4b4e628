"""`distill tune` (distill.tune): a hyper-parameter search with optuna over distilled students.

Why it is laid out this way:

- The teacher is trained once (OUT/teachers/seed-<seed>/, a `distill run` with stages=[teacher])
  and every trial distills from its weights (teacher.checkpoint), stages=[distill] only: a trial
  costs one student, not a teacher and two students.
- Its outputs are cached on disk once, in OUT/caches/seed-<seed>/, and every trial reuses them:
  the cache keys on the teacher's weights, the data and the augmentation, none of which a trial
  changes (tune_space refuses teacher.* keys), so cached targets are exact for every T and weight.
- The objective is the distilled student's validation metric at its validation-selected epoch
  (the task's Selection: accuracy up, perplexity down). Test numbers are not looked at during
  the search; they come from re-running the best config (and, beside it, the untuned one) over
  --seeds in OUT/best/ and OUT/default/ (tune_final).
- TPE sampler; median pruning on the per-validation metric (the `on_epoch` hook of distill.run);
  the study lives in OUT/study.log (optuna's JournalStorage, a plain append-only file), so
  `--resume OUT` continues until N trials have finished (complete, pruned, or diverged).
- A trial killed mid-way (Ctrl-C, kill -9) left a resumable run folder: on `--resume` it is marked
  failed in the study and its parameters are enqueued again; the new trial continues that very
  folder from its checkpoint (after reporting the old trial's validations to the pruner), so the
  killed work is neither lost nor repeated, and no file is deleted.
"""

from __future__ import annotations

import json
import math
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from .config import RunBase, RunConfig, validate
from .engine import NonFiniteLoss
from .errors import DistillError
from .io import write_json
from .resume import lock_folder
from .run_folder import claim
from .runtime import stop_between_runs
from .saved_config import migrate
from .schedule import counts_steps
from .stage_plan import method
from .stages import run
from .tasks import make_task
from .tune_final import finish
from .tune_space import apply_params, from_json, parse_space, to_json
from .tune_state import Settings

RECORD = "tune-run.json"  # the search's settings, so `--resume OUT` needs nothing else
STUDY, STUDY_NAME = "study.log", "distill-tune"
AUGMENTS_CACHED = ("none", "flip", "crop_flip")  # views that replay exactly: a shared disk cache


def load_optuna():
    """optuna, imported only by `distill tune` (an optional extra); quiet unless it warns."""
    try:
        import optuna
    except ImportError:
        raise DistillError("distill tune needs optuna, which is not installed. Install it with "
                           "pip install 'distill[tune]' (or pip install optuna).") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def default_tune_dir(cfg: RunConfig) -> Path:
    return Path("runs") / f"{cfg.name}-tune-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def check_tunable(cfg: RunConfig) -> None:
    """A search distills from one teacher: the config must have a distill stage, plain KD."""
    if "distill" not in cfg.stages:
        raise DistillError("distill tune searches the distill stage's settings, and stages has no "
                           "distill. Add it, e.g. stages=[teacher,scratch,distill].")
    if method(cfg) is not None:
        raise DistillError(f"distill tune runs plain distillation from one teacher; this config sets "
                           f"{method(cfg)}. Tune it without that (or run it with `distill run`).")


def read_record(out: Path) -> dict | None:
    """OUT/tune-run.json with its config validated, or None when OUT holds no search."""
    path = out / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        record["config"] = validate(migrate(record["config"]))
        record["space"] = from_json(record["space"])
    except (ValueError, KeyError, TypeError) as e:
        raise DistillError(f"'{path}' is damaged ({e}). The trials' run folders beside it are intact; "
                           "start a new search with another --out.") from None
    return record


def write_record(out: Path, cfg: RunConfig, s: Settings, finished: bool = False) -> None:
    write_json(out / RECORD, {"schema": 1, "trials": s.trials, "seeds": s.seeds,
                              "startup_trials": s.startup_trials, "space": to_json(s.space),
                              "finished": finished, "config": cfg.model_dump(mode="json")})


def _resume(out: Path, cfg: RunConfig | None, trials: int | None, space: list[str] | None,
            seeds: int | None) -> tuple[RunConfig, Settings]:
    """The search saved in `out`, with more trials or seeds when asked for."""
    record = read_record(out)
    if record is None:
        raise DistillError(f"'{out}' holds no distill tune search (no {RECORD}). Give the folder "
                           "a search was started in, or start one with distill tune --out DIR.")
    base = record["config"]
    if cfg is not None and cfg.model_dump() != base.model_dump():
        raise DistillError(f"--resume continues the search with the config saved in '{out}'; do not "
                           "pass another config (start a new search for it).")
    if space and parse_space(space, base) != record["space"]:
        raise DistillError("--resume continues the search over its saved space; drop --space, or "
                           "start a new search with the new space.")
    s = Settings(trials or record["trials"], record["space"], seeds or record["seeds"],
                 record.get("startup_trials", 5))
    if record["finished"] and s.trials <= record["trials"] and s.seeds <= record["seeds"]:
        raise DistillError(f"'{out}' holds a finished search ({record['trials']} trials, "
                           f"{record['seeds']} seed(s)); there is nothing to resume. Pass --trials M "
                           f"(more than {record['trials']}) or --seeds S to extend it.")
    return base, s


def _start(out: Path, cfg: RunConfig, s: Settings) -> None:
    """A new search folder: refused when it holds a search or files distill did not write."""
    if read_record(out) is not None:
        raise DistillError(f"'{out}' already holds a distill tune search. Continue it with "
                           f"distill tune --resume {out}, or choose another --out.")
    claim(out, "tune", "--out")
    write_record(out, cfg, s)


def tune(cfg: RunConfig | None = None, out_dir: str | Path | None = None, trials: int | None = None,
         space: list[str] | None = None, seeds: int | None = None, resume: bool = False,
         quiet: bool = False, trust_checkpoint: bool = False, startup_trials: int = 5) -> dict:
    """Search `space` (`key=low..high[:log]` strings; None: tune_space.DEFAULT_SPACE) with
    `trials` optuna trials (default 30) of the distill stage, then run the best and the default
    config over `seeds` seeds (default 1) for test numbers; write OUT/tune.md, tune.json and
    best.yaml; return tune.json's dict. `resume=True` continues the search in `out_dir` (cfg
    None or the saved one; `trials` / `seeds` may extend it)."""
    load_optuna()
    if isinstance(space, str):  # a string would be read character by character
        raise DistillError(f"distill.tune's space is a list of key=low..high[:log] strings, e.g. [{space!r}]; "
                           "got one string.")
    for name, value, least in (("trials", trials, 1), ("seeds", seeds, 1), ("startup_trials", startup_trials, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise DistillError(f"distill.tune: {name} must be a whole number >= {least}, got {value!r}.")
    if resume:
        if out_dir is None:
            raise DistillError("distill.tune(resume=True) needs out_dir, the folder of the search.")
        out = Path(out_dir)
        cfg, settings = _resume(out, cfg, trials, space, seeds)
    else:
        if not isinstance(cfg, RunBase):
            raise DistillError(f"distill.tune takes a validated config, not a {type(cfg).__name__}: "
                               "build it with distill.load_config(path_or_None, [\"key=value\", ...]).")
        check_tunable(cfg)
        out = Path(out_dir) if out_dir else default_tune_dir(cfg)
        settings = Settings(trials or 30, parse_space(space, cfg), seeds or 1, startup_trials)
        _start(out, cfg, settings)
    lock = lock_folder(out)
    try:
        return Search(cfg, out, settings, quiet, trust_checkpoint).run()
    finally:
        os.close(lock)


class Pruning:
    """The `on_epoch` hook of a trial's run: each validation of the distill stage is reported to
    optuna at its epoch (or step, for step schedules), and a trial the pruner gives up on stops
    with optuna.TrialPruned. `history` ([step, value] pairs) replays a killed trial's reports."""

    def __init__(self, trial, metric: str, by_steps: bool, history: list | None = None):
        self.trial, self.key, self.by_steps = trial, f"val_{metric}", by_steps
        self.reported: set[int] = set()
        self.last: float | None = None
        for step, value in history or []:
            self._report(int(step), float(value))

    def _report(self, step: int, value: float) -> None:
        if step not in self.reported and math.isfinite(value):
            self.trial.report(value, step)
            self.reported.add(step)
            self.last = value

    def __call__(self, stage: str, record: dict) -> None:
        if stage != "distill" or self.key not in record:
            return
        step = int(record["step"] if self.by_steps else record["epoch"])
        self._report(step, float(record[self.key]))
        if self.trial.should_prune():
            import optuna

            raise optuna.TrialPruned(f"pruned at {'step' if self.by_steps else 'epoch'} {step}")


def finished_states(study) -> list:
    """The trials that count towards N: complete, pruned, or failed by diverging (not killed)."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and "diverged" in t.user_attrs)]


class Search:
    """One search into OUT: the teacher, the trials, then tune_final's seeds and report."""

    def __init__(self, cfg: RunConfig, out: Path, settings: Settings, quiet: bool, trust: bool):
        self.cfg, self.out, self.s, self.quiet, self.trust = cfg, out, settings, quiet, trust
        self.selection = make_task(cfg).selection
        self.metric = self.selection.metric
        self.trains_teacher = "teacher" in cfg.stages and not make_task(cfg).pretrained_teacher()
        self.study: Any = None
        self.times: list[float] = []

    def log(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)

    def run(self) -> dict:
        start = time.perf_counter()
        teacher = self.teacher(self.cfg.seed)
        self.study = self._study()
        self._search(teacher)
        result = finish(self)
        result["seconds"]["this_call"] = time.perf_counter() - start
        write_record(self.out, self.cfg, self.s, finished=True)
        return result

    def overrides(self, seed: int, teacher: str | None, stages: list[str]) -> dict[str, Any]:
        """How a trial or a seed run differs from the config: its seed and stages, the shared
        teacher's weights and the shared disk cache of that teacher's outputs."""
        out: dict[str, Any] = {"seed": seed, "stages": stages}
        if teacher:
            out |= {"teacher.checkpoint": teacher, "teacher.train": {}}
        cache, cached = self.cfg.cache, self.cfg.task == "classification" and self.cfg.data.augment in AUGMENTS_CACHED
        if cache.mode == "auto" and cached or cache.mode == "disk" and not cache.dir:
            out |= {"cache.mode": "disk", "cache.dir": str(self.out.absolute() / "caches" / f"seed-{seed}")}
        return out

    def teacher(self, seed: int) -> str | None:
        """OUT/teachers/seed-<seed>/teacher.safetensors, trained once (continued when a kill
        interrupted it); None when the config's teacher is given (a checkpoint or a model name)."""
        if not self.trains_teacher:
            return None
        folder = self.out / "teachers" / f"seed-{seed}"
        if not (folder / "summary.json").is_file():
            self.log(f"Training the teacher (seed {seed}) once, into {folder}.")
            cfg = apply_params(self.cfg, [], {}, {"seed": seed, "stages": ["teacher"]})
            run(cfg, folder, quiet=self.quiet, resume=(folder / "config.yaml").is_file(),
                trust_checkpoint=self.trust)
            stop_between_runs()
        return str((folder / "teacher.safetensors").absolute())

    def _study(self):
        optuna = load_optuna()
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(str(self.out / STUDY)))
        direction = "minimize" if self.selection.lower_is_better else "maximize"
        train = self.cfg.train
        warmup = 0 if counts_steps(train) else train.epochs // 4  # early epochs say little
        pruner = optuna.pruners.MedianPruner(n_startup_trials=self.s.startup_trials, n_warmup_steps=warmup)
        study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction=direction,
                                    pruner=pruner, load_if_exists=True)
        # seeded by how far the search got, so a resumed search does not redraw the first points
        study.sampler = optuna.samplers.TPESampler(seed=self.cfg.seed + len(study.trials))
        return study

    def _distributions(self) -> dict:
        from optuna.distributions import FloatDistribution, IntDistribution

        return {p.key: IntDistribution(int(p.low), int(p.high), log=p.log) if p.integer
                else FloatDistribution(p.low, p.high, log=p.log) for p in self.s.space}

    def _requeue_killed(self) -> None:
        """Trials left running by a killed process: failed in the study, their parameters
        enqueued again with their run folder and reported validations (module docstring)."""
        from optuna.trial import TrialState

        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            self.study.tell(t.number, state=TrialState.FAIL)
            folder = t.user_attrs.get("folder", f"trial-{t.number}")
            history = t.user_attrs.get("history", []) + [[s, v] for s, v in sorted(t.intermediate_values.items())]
            self.study.enqueue_trial(t.params, user_attrs={"folder": folder, "resumes": t.number,
                                                           "history": history}, skip_if_exists=False)
            self.log(f"Trial {t.number} was interrupted; its run folder trials/{folder} continues.")

    def _search(self, teacher: str | None) -> None:
        self._requeue_killed()
        while (done := len(finished_states(self.study))) < self.s.trials:
            trial = self.study.ask(self._distributions())
            state, value, seconds = self._run_trial(trial, teacher)
            self.times.append(seconds)
            self._progress(trial.number, done + 1, state, value, seconds)
            stop_between_runs()  # a stop after the trial's last check: before the next run clears it

    def _run_trial(self, trial, teacher: str | None) -> tuple[str, float | None, float]:
        """One trial: a distill-only run of the sampled config into OUT/trials/<folder>/."""
        from optuna import TrialPruned
        from optuna.trial import TrialState

        from .seeds import load_summary

        folder = self.out / "trials" / trial.user_attrs.get("folder", f"trial-{trial.number}")
        cfg = apply_params(self.cfg, self.s.space, trial.params, self.overrides(self.cfg.seed, teacher, ["distill"]))
        hook = Pruning(trial, self.metric, counts_steps(cfg.train), trial.user_attrs.get("history"))
        start = time.perf_counter()
        try:
            if (folder / "summary.json").is_file():  # finished before a kill: read, not rerun
                summary = load_summary(folder)
            else:
                summary = run(cfg, folder, quiet=True, resume=(folder / "config.yaml").is_file(),
                              trust_checkpoint=self.trust, on_epoch=hook)
        except TrialPruned:
            seconds = time.perf_counter() - start
            trial.set_user_attr("seconds", seconds)
            self.study.tell(trial, state=TrialState.PRUNED)
            return "pruned", hook.last, seconds
        except NonFiniteLoss as e:
            seconds = time.perf_counter() - start
            trial.set_user_attr("seconds", seconds)
            trial.set_user_attr("diverged", str(e)[:500])
            self.study.tell(trial, state=TrialState.FAIL)
            return "diverged", None, seconds
        seconds = time.perf_counter() - start
        value = float(summary["stages"]["distill"][f"val_{self.metric}"])
        trial.set_user_attr("seconds", seconds)
        trial.set_user_attr("best_epoch", summary["stages"]["distill"].get("best_epoch"))
        self.study.tell(trial, value)
        return "complete", value, seconds

    def _progress(self, number: int, done: int, state: str, value: float | None, seconds: float) -> None:
        """trial k/N, its value, the best so far and the time left (mean trial time x trials left)."""
        m = f"val_{self.metric}"
        shown = f"{m} {value:.4g}" if value is not None else "no value"
        what = {"complete": shown, "pruned": f"pruned ({shown} at the last validation)",
                "diverged": "diverged (non-finite loss)"}[state]
        try:
            best = f"best {self.study.best_value:.4g} (trial {self.study.best_trial.number})"
        except ValueError:  # no complete trial yet
            best = "no complete trial yet"
        left = (self.s.trials - done) * sum(self.times) / len(self.times)
        self.log(f"trial {done}/{self.s.trials} (#{number}): {what}; {best}; {seconds:.1f} s; "
                 f"about {left:.0f} s of trials left")
