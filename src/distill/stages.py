"""A run, top to bottom: teacher, scratch student, distilled student; then the summary.

Answers one question: did distillation help? The scratch and distilled students share the
architecture, the initial weights (the seed is reset before each), the data order and the
schedule; only the teacher's terms differ. Selection is on validation; test is only reported.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import Checkpointer
from .config import RunConfig, absolute_paths, stage_train, to_yaml
from .engine import fit
from .errors import DistillError
from .io import append_line, load_weights, save_weights, write_json, write_text
from .models import count_parameters
from .progress import StageProgress
from .resume import lock_run, prune_metrics, read_stages, resumable
from .run_folder import check, claim, legacy, sweep
from .runtime import (
    all_gather_objects,
    barrier,
    configure,
    init_distributed,
    is_main,
    rank,
    resolve_device,
    seed_everything,
    stop_handlers,
    world_size,
)
from .tasks import make_task
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


def _epochs(n: int) -> str:
    return f"{n} epoch{'s' if n != 1 else ''}"


def _summary_writer_class():
    """TensorBoard is optional: metrics.jsonl always holds the same numbers."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise DistillError(
            "log.tensorboard=true needs the tensorboard package: pip install 'distill[tensorboard]' "
            "(or set log.tensorboard=false; metrics.jsonl holds the same numbers)."
        ) from None
    return SummaryWriter


class Run:
    """One run folder: writes config.yaml, metrics.jsonl, weights, stages.json, summary.json.

    stages.json records each finished stage's results, and checkpoint.json the stage in
    progress, so `resume=True` skips finished stages and continues the interrupted one exactly.
    """

    def __init__(self, cfg: RunConfig, out_dir: Path, quiet: bool = False, resume: bool = False,
                 trust_checkpoint: bool = False):
        # config.yaml must read the same files from any directory (eval, export, report)
        cfg = absolute_paths(cfg)
        self.cfg, self.dir, self.quiet = cfg, Path(out_dir), quiet
        self.resume, self.trust = resume, trust_checkpoint
        self.device = resolve_device(cfg.train.device)
        self.main = is_main()  # only rank 0 prints and writes files
        self.quiet = quiet or not self.main
        self.tensorboard = None  # a SummaryWriter when log.tensorboard is on
        self.metrics = self.dir / "metrics.jsonl"
        self.results: dict[str, dict] = {}
        self.task = make_task(cfg)
        self.lock: int | None = None  # the run folder's lock (rank 0), held for the whole run
        self.data_id: tuple[str, str] | None = None  # (fingerprint, source) checkpoints carry

    def log(self, text: str) -> None:
        if not self.quiet:
            from rich import print as rprint

            rprint(text)

    def train_stage(self, stage: str, distiller, loader, data) -> dict:
        model = distiller.student
        checkpointer = Checkpointer(self.dir, stage, self.data_id)
        resume = checkpointer.load() if self.resume else None
        # before the first epoch line: what a killed attempt of this stage wrote after its
        # checkpoint goes, so no (stage, epoch) is ever written twice
        self._prune_metrics(stage, resume["state"].epoch if resume else 0)
        if resume:
            state = resume["state"]
            self.log(f"Resuming {stage} after epoch {state.epoch}, step {state.step}.")
        train = stage_train(self.cfg, stage)
        done = resume["state"].epoch * len(loader) + resume["state"].step if resume else 0
        with StageProgress(stage, train.epochs, len(loader), self.quiet, start=done) as bar:

            def on_epoch(record):
                if self.main:
                    append_line(self.metrics, json.dumps({"stage": stage, **record}))
                    if self.tensorboard is not None:
                        for key, value in record.items():
                            if key != "epoch":
                                self.tensorboard.add_scalar(f"{stage}/{key}", value, record["epoch"])
                        self.tensorboard.flush()
                bar.epoch_done(record)

            result = fit(
                distiller, loader, data.val, train, self.device, bar.step, on_epoch,
                checkpointer=checkpointer, resume=resume,
            )
        self.save(distiller, f"{stage}-last")
        task, device = self.task, self.device
        last = {"val": result.history[-1], "test": task.evaluate(model, data.test, device)}
        distiller.load_state_dict(result.best_state)
        self.save(distiller, stage)
        test = task.evaluate(model, data.test, device)
        record = self.results[stage]
        record["best_epoch"] = result.best_epoch
        for m in task.metrics:
            record.update({f"val_{m}": result.best_val[m], f"test_{m}": test[m],
                           f"last_val_{m}": last["val"][f"val_{m}"], f"last_test_{m}": last["test"][m]})
        record["seconds"] = sum(r["seconds"] for r in result.history)
        if self.main:
            write_json(self.dir / "stages.json", self.results)  # the stage is done...
            Checkpointer.clear(self.dir)  # ...so its checkpoint is no longer needed
        barrier()
        return record

    def _prune_metrics(self, stage: str, epochs_kept: int) -> None:
        """self.results already holds `stage` (created just before training it), unfinished."""
        if self.main:
            prune_metrics(self.metrics, stage, set(self.results) - {stage}, epochs_kept)

    def save(self, distiller, stem: str) -> None:
        """The student alone in <stem>.safetensors; trainable loss parts (projectors) beside it."""
        if not self.main:
            return
        save_weights(distiller.student, self.dir / f"{stem}.safetensors")
        if any(True for _ in distiller.terms.parameters()):
            save_weights(distiller.terms, self.dir / f"{stem}-losses.safetensors")

    def _prepare_folder(self) -> None:
        """Rank 0 checks and creates the run folder; every process learns the outcome."""
        error = None
        if self.main:
            try:
                self._check_and_create_folder()
            except DistillError as e:
                error = str(e)
        errors = [e for e in all_gather_objects(error) if e]
        if errors:
            raise DistillError(errors[0])
        if self.resume and (self.dir / "stages.json").exists():
            self.results = read_stages(self.dir)

    def _check_and_create_folder(self) -> None:
        if self.resume and not (self.dir / "config.yaml").exists():
            raise DistillError(f"'{self.dir}' holds no run to resume (no config.yaml there).")
        # distill's marker first: a folder of the user's (files, no marker) is refused before
        # anything in it is read as a run or written; an older run folder is adopted on resume
        claim(self.dir, "run", "--resume" if self.resume else "--out",
              adopt=self.resume and legacy(self.dir, "run"))
        finished = (self.dir / "summary.json").exists()
        started = (self.dir / "config.yaml").exists()
        if finished:
            raise DistillError(
                f"'{self.dir}' already holds a finished run. Choose another --out, or delete it."
            )
        if started and not self.resume:
            raise DistillError(
                f"'{self.dir}' holds an unfinished run. Continue it with `distill run --resume "
                f"{self.dir}`, or choose another --out."
            )
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if not self.resume:
                write_text(self.dir / "config.yaml", to_yaml(self.cfg))
        except OSError as e:
            raise DistillError(
                f"Cannot write the run folder '{self.dir}': {e.strerror or e}. Choose a writable "
                "--out with free space."
            ) from None

    def unlock(self) -> None:
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None

    def run(self) -> dict:
        cfg = self.cfg
        configure(cfg.seed, cfg.train.deterministic, cfg.train.threads)
        init_distributed(self.device)
        task = self.task
        data = task.build_data(cfg.seed)
        for loader in (data.teacher_train, data.train, data.val, data.test):
            loader.shard(rank(), world_size())
        terms, ce_weight = task.build_terms()
        self._preflight(data, terms)
        # the writer's class is checked before the folder exists; the writer (which creates
        # its log folder) only after the folder checks, so a refused run writes nothing
        writer = _summary_writer_class() if cfg.log.tensorboard and self.main else None
        self._prepare_folder()
        self.lock = lock_run(self.dir)
        sha = self.task.data_summary(data).get("sha256")
        self.data_id = (sha, f"data.path '{cfg.data.path}'" if cfg.data.path else
                        f"data.name={cfg.data.name}") if sha else None
        if writer is not None:
            self.tensorboard = writer(log_dir=str(self.dir / "tensorboard"))
        lines = task.describe(data)
        lines[0] += f" Device {self.device}. Run folder {self.dir}"
        for line in [*lines, self._schedule()]:
            self.log(line)
        teacher = self.teacher_stage(data)
        for stage in ("scratch", "distill"):
            if stage not in cfg.stages or stage in self.results:
                continue
            seed_everything(cfg.seed)  # same initial weights for scratch and distilled students
            student = task.create_model("student", data)
            if cfg.student.checkpoint:  # both students start from it, so the pair stays paired
                self._load_checkpoint(student, "student")
            if stage == "scratch":
                distiller = task.distiller(None, student, {}, 1.0)
            else:
                distiller = task.distiller(teacher, student, terms, ce_weight)
            self.results[stage] = {"params": count_parameters(student)}
            if stage == "distill":
                why = task.open_cache(distiller, data, self.dir, self.quiet)
                self.log(f"Teacher cache: {why}")
                self.results[stage]["cache"] = why
            self._seed_training()
            self.train_stage(stage, distiller, data.train, data)
        summary = self.summary(data)
        if self.main:
            write_json(self.dir / "summary.json", summary)
        return summary

    def _schedule(self) -> str:
        """Each stage's resolved epochs and learning rate: `teacher.train` overrides `train` for
        the teacher, which a user who set train.epochs alone should see."""
        cfg, parts = self.cfg, []
        if "teacher" in cfg.stages and not self.task.pretrained_teacher():
            t = stage_train(cfg, "teacher")
            own = f" (teacher.train sets {', '.join(sorted(cfg.teacher.train))})" if cfg.teacher.train else ""
            parts.append(f"teacher {_epochs(t.epochs)}, {t.optimizer} lr {t.lr:g}{own}")
        students = [s for s in ("scratch", "distill") if s in cfg.stages]
        if students:
            t = cfg.train
            parts.append(f"{' and '.join(students)} {_epochs(t.epochs)}, {t.optimizer} lr {t.lr:g}")
        return f"Schedule: {'; '.join(parts)}."

    def _load_checkpoint(self, model: nn.Module, role: str) -> None:
        note = load_weights(model, getattr(self.cfg, role).checkpoint, trust=self.trust)
        self.log(f"{role.capitalize()} checkpoint: {note}")

    def _seed_training(self) -> None:
        """The same dropout draws for every stage's training; each DDP process its own."""
        seed_everything(self.cfg.seed + 1 + 7919 * rank())

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
            check(cfg.cache.dir, "cache", "cache.dir", adopt=legacy(cfg.cache.dir, "cache"))
        self.task.preflight(data, terms, has_teacher)

    def teacher_stage(self, data) -> nn.Module | None:
        cfg, task = self.cfg, self.task
        pretrained = task.pretrained_teacher()
        if "teacher" not in cfg.stages and not pretrained:
            return None
        seed_everything(cfg.seed)
        teacher = task.create_model("teacher", data)
        if "teacher" in self.results:  # finished before a resume
            load_weights(teacher, self.dir / "teacher.safetensors")
        elif pretrained:
            if cfg.teacher.checkpoint:
                self._load_checkpoint(teacher, "teacher")
            teacher.to(self.device)
            val, test = (task.evaluate(teacher, loader, self.device) for loader in (data.val, data.test))
            self.results["teacher"] = {"params": count_parameters(teacher), "checkpoint": pretrained}
            for m in task.metrics:
                self.results["teacher"].update({f"val_{m}": val[m], f"test_{m}": test[m]})
        else:
            self.results["teacher"] = {"params": count_parameters(teacher)}
            self._seed_training()
            self.train_stage("teacher", task.distiller(None, teacher, {}, 1.0), data.teacher_train, data)
        return task.ready_teacher(teacher, self.device)

    def summary(self, data) -> dict:
        stages, p = self.results, self.task.selection.metric
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
        resume: bool = False, trust_checkpoint: bool = False) -> dict:
    """Run every configured stage into `out_dir` (default runs/<name>-<timestamp>/); return the
    summary. `resume=True` continues the unfinished run in `out_dir` exactly where it stopped."""
    start = time.perf_counter()
    out = Path(out_dir) if out_dir else default_run_dir(cfg)
    runner = Run(cfg, out, quiet, resume, trust_checkpoint)
    try:
        with stop_handlers():
            summary = runner.run()
        summary["wall_seconds"] = time.perf_counter() - start
        if is_main():
            write_json(out / "summary.json", summary)
            sweep(out)  # orphaned .tmp and ckpt-* files of killed writes: only distill's own names
    except OSError as e:  # a full disk mid-run (WriteFailed, or an OSError from a library)
        raise resumable(e, out) from None
    finally:
        runner.unlock()
    return summary
