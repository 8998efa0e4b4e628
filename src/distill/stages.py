"""A run, top to bottom: teacher, scratch student, distilled student; then the summary.

Answers one question: did distillation help? The scratch and distilled students share the
architecture, the initial weights (the seed is reset before each), the data order and the
schedule; only the teacher's terms differ. Selection is on validation; test is only reported.
The run folder's files (metrics, weights, resume records, summary) are run_files.RunFolder's.
"""

from __future__ import annotations

import platform
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import RunBase, RunConfig, absolute_paths, stage_train
from .engine import fit
from .errors import DistillError
from .io import load_weights
from .models import count_parameters
from .progress import StageProgress
from .resume import resumable
from .run_files import RunFolder, tensorboard_class
from .run_folder import check, legacy
from .runtime import (
    configure,
    init_distributed,
    rank,
    resolve_device,
    seed_everything,
    stop_handlers,
    world_size,
)
from .schedule import Every, counts_steps
from .tasks import make_task
from .version import __version__

STUDENTS = ("scratch", "distill")
EpochHook = Callable[[str, dict], None]


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


def _data_id(cfg: RunConfig, sha: str | None) -> tuple[str, str] | None:
    """(fingerprint, where the data come from): what checkpoints carry to refuse other data."""
    if not sha:
        return None
    return sha, f"data.path '{cfg.data.path}'" if cfg.data.path else f"data.name={cfg.data.name}"


class Run:
    """One run: its stages trained into a RunFolder, in order; finished stages are skipped on
    `resume=True` (stages.json) and the interrupted one continues exactly (checkpoint.json)."""

    def __init__(self, cfg: RunConfig, out_dir: Path, quiet: bool = False, resume: bool = False,
                 trust_checkpoint: bool = False, on_epoch: EpochHook | None = None):
        # config.yaml must read the same files from any directory (eval, export, report)
        cfg = absolute_paths(cfg)
        self.cfg, self.trust = cfg, trust_checkpoint
        self.device = resolve_device(cfg.train.device)
        self.folder = RunFolder(out_dir, resume)
        self.quiet = quiet or not self.folder.main  # only rank 0 prints
        self.task = make_task(cfg, trust_checkpoint)
        self.data_id: tuple[str, str] | None = None  # (fingerprint, source) checkpoints carry
        self.on_epoch = on_epoch  # told (stage, record) after each evaluation, e.g. to prune a trial

    def log(self, text: str) -> None:
        if not self.quiet:
            from rich import print as rprint

            rprint(text)

    def run(self) -> dict:
        self._configure()
        data = self._data()
        terms, ce_weight = self.task.build_terms()
        self._preflight(data, terms)
        self._open_folder(data)
        teacher = self.teacher_stage(data)
        for stage in self._students_left():
            self.student_stage(stage, data, teacher, terms, ce_weight)
        return self.summary(data)  # `run` writes it, once, with the wall time

    def _configure(self) -> None:
        cfg = self.cfg
        configure(cfg.seed, cfg.train.deterministic, cfg.train.threads)
        init_distributed(self.device)

    def _data(self):
        """The task's data, each loader sharded across the DDP processes."""
        data = self.task.build_data(self.cfg.seed)
        for loader in (data.teacher_train, data.train, data.val, data.test):
            loader.shard(rank(), world_size())
        return data

    def _preflight(self, data, terms: dict) -> None:
        """Catch config, model and layer-path mistakes before any training time is spent."""
        cfg = self.cfg
        for role in ("teacher", "student"):
            path = getattr(cfg, role).checkpoint
            if path and not Path(path).is_file():
                raise DistillError(f"{role}.checkpoint '{path}' is not a file. Give the path of "
                                   f"saved weights (.safetensors, .pt, .pth), or {role}.checkpoint=null.")
        has_teacher = "teacher" in cfg.stages or bool(self.task.pretrained_teacher())
        if "distill" in cfg.stages and not has_teacher:
            raise DistillError(
                "The distill stage needs a teacher: add 'teacher' to stages, or set "
                "teacher.checkpoint to a trained teacher's weights."
            )
        if "distill" in cfg.stages and not terms:
            raise DistillError("The distill stage needs a distillation term, e.g. loss.kd.weight=0.9.")
        if cfg.cache.mode == "disk" and cfg.cache.dir and "distill" in cfg.stages:  # a folder of yours: now, not after training
            cache, run = Path(cfg.cache.dir).resolve(), self.folder.dir.resolve()
            if cache == run or cache in run.parents:
                where = "is this run's folder" if cache == run else f"holds this run's folder '{run}'"
                raise DistillError(f"cache.dir '{cfg.cache.dir}' {where}; the teacher cache needs a "
                                   "folder of its own. Leave cache.dir unset to keep it in "
                                   "<run folder>/teacher_cache, or choose another folder.")
            check(cfg.cache.dir, "cache", "cache.dir", adopt=legacy(cfg.cache.dir, "cache"))
        self.task.preflight(data, terms, has_teacher)

    def _open_folder(self, data) -> None:
        """Check, create and lock the run folder; say what this run is about to do."""
        cfg, folder = self.cfg, self.folder
        # the writer's class is checked before the folder exists; the writer (which creates
        # its log folder) only after the folder checks, so a refused run writes nothing
        writer = tensorboard_class() if cfg.log.tensorboard and folder.main else None
        folder.open(cfg)
        self.data_id = _data_id(cfg, self.task.data_summary(data).get("sha256"))
        if writer is not None:
            folder.start_tensorboard(writer)
        lines = self.task.describe(data)
        lines[0] += f" Device {self.device}. Run folder {folder.dir}"
        for line in [*lines, self._schedule()]:
            self.log(line)

    def _schedule(self) -> str:
        """Each stage's resolved length (epochs or max_steps) and learning rate: `teacher.train`
        overrides `train` for the teacher, which a user who set train.epochs alone should see."""
        cfg, parts = self.cfg, []
        if "teacher" in cfg.stages and not self.task.pretrained_teacher():
            t = stage_train(cfg, "teacher")
            own = f" (teacher.train sets {', '.join(sorted(cfg.teacher.train))})" if cfg.teacher.train else ""
            parts.append(f"teacher {_length(t)}, {t.optimizer} lr {t.lr:g}{own}")
        students = [s for s in STUDENTS if s in cfg.stages]
        if students:
            t = cfg.train
            parts.append(f"{' and '.join(students)} {_length(t)}, {t.optimizer} lr {t.lr:g}")
        return f"Schedule: {'; '.join(parts)}."

    def teacher_stage(self, data) -> nn.Module | None:
        """The teacher, ready to distill from: trained here, loaded back after a resume, or a
        pretrained one (evaluated once); None when the run has no teacher."""
        cfg, task, results = self.cfg, self.task, self.folder.results
        pretrained = task.pretrained_teacher()
        if "teacher" not in cfg.stages and not pretrained:
            return None
        seed_everything(cfg.seed)
        teacher = task.create_model("teacher", data)
        if "teacher" in results:  # finished before a resume
            load_weights(teacher, self.folder.dir / "teacher.safetensors")
        elif pretrained:
            self._pretrained_teacher(teacher, pretrained, data)
        else:
            results["teacher"] = {"params": count_parameters(teacher)}
            self._seed_training()
            self.train_stage("teacher", task.distiller(None, teacher, {}, 1.0), data.teacher_train, data)
        return task.ready_teacher(teacher, self.device)

    def _pretrained_teacher(self, teacher: nn.Module, pretrained: str, data) -> None:
        """A teacher trained elsewhere: its checkpoint loaded, its val and test metrics recorded."""
        task = self.task
        if self.cfg.teacher.checkpoint:
            self._load_checkpoint(teacher, "teacher")
        teacher.to(self.device)
        val, test = (task.evaluate(teacher, loader, self.device) for loader in (data.val, data.test))
        record = self.folder.results["teacher"] = {"params": count_parameters(teacher), "checkpoint": pretrained}
        for m in task.metrics:
            record.update({f"val_{m}": val[m], f"test_{m}": test[m]})

    def _students_left(self) -> list[str]:
        """The configured student stages a resume has not already finished."""
        return [s for s in STUDENTS if s in self.cfg.stages and s not in self.folder.results]

    def student_stage(self, stage: str, data, teacher: nn.Module | None, terms: dict,
                      ce_weight: float) -> None:
        """Train the scratch (labels only) or the distilled student from the same start."""
        cfg, task, results = self.cfg, self.task, self.folder.results
        seed_everything(cfg.seed)  # same initial weights for scratch and distilled students
        student = task.create_model("student", data)
        if cfg.student.checkpoint:  # both students start from it, so the pair stays paired
            self._load_checkpoint(student, "student")
        if stage == "scratch":
            distiller = task.distiller(None, student, {}, 1.0)
        else:
            distiller = task.distiller(teacher, student, terms, ce_weight)
        results[stage] = {"params": count_parameters(student)}
        if stage == "distill":
            why = task.open_cache(distiller, data, self.folder.dir, self.quiet)
            self.log(f"Teacher cache: {why}")
            results[stage]["cache"] = why
        self._seed_training()
        self.train_stage(stage, distiller, data.train, data)

    def _load_checkpoint(self, model: nn.Module, role: str) -> None:
        note = load_weights(model, getattr(self.cfg, role).checkpoint, trust=self.trust)
        self.log(f"{role.capitalize()} checkpoint: {note}")

    def _seed_training(self) -> None:
        """The same dropout draws for every stage's training; each DDP process its own."""
        seed_everything(self.cfg.seed + 1 + 7919 * rank())

    def train_stage(self, stage: str, distiller, loader, data) -> dict:
        """Train one stage (from its checkpoint on a resume), save and test its last and its
        validation-selected weights, and record it as finished."""
        checkpointer, resume = self.folder.begin_stage(stage, self.data_id)
        if resume:
            state = resume["state"]
            self.log(f"Resuming {stage} after epoch {state.epoch}, step {state.step}.")
        result = self._fit(stage, distiller, loader, data, checkpointer, resume)
        record = self._record(stage, distiller, result, data)
        self.folder.finish_stage()
        return record

    def _fit(self, stage: str, distiller, loader, data, checkpointer, resume: dict | None):
        train = stage_train(self.cfg, stage)
        done = resume["state"].epoch * len(loader) + resume["state"].step if resume else 0
        with StageProgress(stage, train.epochs, len(loader), self.quiet, start=done,
                           metric=self.task.selection.metric, max_steps=train.max_steps) as bar:

            def on_epoch(record):
                self.folder.log_epoch(stage, record, counts_steps(train))
                bar.epoch_done(record)
                if self.on_epoch is not None:
                    self.on_epoch(stage, record)

            return fit(
                distiller, loader, data.val, train, self.device, bar.step, on_epoch,
                checkpointer=checkpointer, resume=resume, selection=self.task.selection,
            )

    def _record(self, stage: str, distiller, result, data) -> dict:
        """Save the last epoch's and the selected epoch's weights; record both on val and test."""
        task, device, model = self.task, self.device, distiller.student
        self.folder.save(distiller, f"{stage}-last")
        last = {"val": result.history[-1], "test": task.evaluate(model, data.test, device)}
        distiller.load_state_dict(result.best_state)
        self.folder.save(distiller, stage)
        test = task.evaluate(model, data.test, device)
        record = self.folder.results[stage]
        record["best_epoch"], record["best_step"] = result.best_epoch, result.best_step
        for m in task.metrics:
            record.update({f"val_{m}": result.best_val[m], f"test_{m}": test[m],
                           f"last_val_{m}": last["val"][f"val_{m}"], f"last_test_{m}": last["test"][m]})
        record["seconds"] = sum(r["seconds"] for r in result.history)
        return record

    def summary(self, data) -> dict:
        stages, p = self.folder.results, self.task.selection.metric
        gain = None
        if "scratch" in stages and "distill" in stages:
            gain = {
                key: stages["distill"][key] - stages["scratch"][key]
                for key in (f"test_{p}", f"val_{p}", f"last_test_{p}")
            }
        return {
            "schema": 1,
            "name": self.cfg.name,
            "seed": self.cfg.seed,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": str(self.device),
            "processes": world_size(),
            "precision": self.cfg.train.precision,
            "task": self.cfg.task,
            "primary": {"metric": p, "lower_is_better": self.task.selection.lower_is_better},
            "data": {"name": self.cfg.data.name, **self.task.data_summary(data)},
            "stages": stages,
            "gain": gain,
            "environment": _environment(),
        }


def run(cfg: RunConfig, out_dir: str | Path | None = None, quiet: bool = False,
        resume: bool = False, trust_checkpoint: bool = False, on_epoch: EpochHook | None = None) -> dict:
    """Run every configured stage into `out_dir` (default runs/<name>-<timestamp>/); return the
    summary. `resume=True` continues the unfinished run in `out_dir` exactly where it stopped.
    `on_epoch(stage, record)` is called after each validation (record: metrics.jsonl's line);
    an exception it raises stops the run, resumable, as a kill would."""
    if not isinstance(cfg, RunBase):
        raise DistillError(f"distill.run takes a validated config, not a {type(cfg).__name__}: build it with "
                           "distill.load_config(path_or_None, [\"key=value\", ...]).")
    start = time.perf_counter()
    out = Path(out_dir) if out_dir else default_run_dir(cfg)
    runner = Run(cfg, out, quiet, resume, trust_checkpoint, on_epoch)
    try:
        with stop_handlers():
            summary = runner.run()
        summary["wall_seconds"] = time.perf_counter() - start
        runner.folder.write_summary(summary)
        runner.folder.sweep()
    except OSError as e:  # a full disk mid-run (WriteFailed, or an OSError from a library)
        raise resumable(e, out) from None
    finally:
        runner.folder.unlock()
    return summary
