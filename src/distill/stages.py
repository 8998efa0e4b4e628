"""A run, top to bottom: teacher, scratch student, distilled student; then the summary.

Answers one question: did distillation help? The scratch and distilled students share the
architecture, the initial weights (the seed is reset before each), the data order and the
schedule; only the teacher's terms differ. Selection is on validation; test is only reported.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__
from .cache import open_cache
from .checkpoint import Checkpointer
from .config import RunConfig, to_yaml
from .data import Data, build_data
from .distiller import Distiller
from .engine import evaluate, fit
from .errors import DistillError
from .io import append_line, load_weights, save_weights, write_json, write_text
from .losses import resolve_loss
from .models import count_parameters, create_model
from .progress import StageProgress
from .runtime import (
    DTYPES,
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


def default_run_dir(cfg: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.name}-{stamp}"


def build_terms(cfg: RunConfig) -> tuple[dict, float]:
    """{name: (loss_module, weight)} for every non-CE term, and the CE weight."""
    terms = {}
    for name, params in cfg.loss.items():
        if name == "ce":
            continue
        args = {k: v for k, v in params.items() if k != "weight"}
        terms[name] = (resolve_loss(name)(**args), params.get("weight", 1.0))
    return terms, cfg.loss.get("ce", {"weight": 0.0}).get("weight", 1.0)


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


def _check_classes(model: nn.Module, role: str, data: Data, device) -> None:
    x = next(iter(data.val))[0][:2].to(device)
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except RuntimeError as e:
        raise DistillError(
            f"The {role} cannot take this data's inputs of shape {tuple(data.in_shape)}: {e}"
        ) from None
    if out.shape[-1] != data.num_classes:
        raise DistillError(
            f"The {role} outputs {out.shape[-1]} classes but the data has {data.num_classes}. "
            f"Use a {role} built for {data.num_classes} classes."
        )


def _summary_writer(folder: Path):
    """TensorBoard is optional: metrics.jsonl always holds the same numbers."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise DistillError(
            "log.tensorboard=true needs the tensorboard package: pip install 'distill[tensorboard]' "
            "(or set log.tensorboard=false; metrics.jsonl holds the same numbers)."
        ) from None
    return SummaryWriter(log_dir=str(folder))


class Run:
    """One run folder: writes config.yaml, metrics.jsonl, weights, stages.json, summary.json.

    stages.json records each finished stage's results, and checkpoint.json the stage in
    progress, so `resume=True` skips finished stages and continues the interrupted one exactly.
    """

    def __init__(self, cfg: RunConfig, out_dir: Path, quiet: bool = False, resume: bool = False,
                 trust_checkpoint: bool = False):
        self.cfg, self.dir, self.quiet = cfg, Path(out_dir), quiet
        self.resume, self.trust = resume, trust_checkpoint
        self.device = resolve_device(cfg.train.device)
        self.main = is_main()  # only rank 0 prints and writes files
        self.quiet = quiet or not self.main
        self.tensorboard = None  # a SummaryWriter when log.tensorboard is on
        self.metrics = self.dir / "metrics.jsonl"
        self.results: dict[str, dict] = {}

    def log(self, text: str) -> None:
        if not self.quiet:
            from rich import print as rprint

            rprint(text)

    def train_stage(self, stage: str, distiller: Distiller, loader, data: Data) -> dict:
        model = distiller.student
        checkpointer = Checkpointer(self.dir, stage)
        resume = checkpointer.load() if self.resume else None
        self._prune_metrics(stage, resume["state"].epoch if resume else 0)
        if resume:
            state = resume["state"]
            self.log(f"Resuming {stage} after epoch {state.epoch}, step {state.step}.")
        with StageProgress(stage, self.cfg.train.epochs, len(loader), self.quiet) as bar:

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
                distiller, loader, data.val, self.cfg.train, self.device, bar.step, on_epoch,
                checkpointer=checkpointer, resume=resume,
            )
        self.save(distiller, f"{stage}-last")
        last = {"val": result.history[-1]["val_acc"], "test": evaluate(model, data.test, self.device)["acc"]}
        distiller.load_state_dict(result.best_state)
        self.save(distiller, stage)
        self.results[stage].update({
            "best_epoch": result.best_epoch,
            "val_acc": result.best_val["acc"],
            "test_acc": evaluate(model, data.test, self.device)["acc"],
            "last_val_acc": last["val"],
            "last_test_acc": last["test"],
            "seconds": sum(r["seconds"] for r in result.history),
        })
        if self.main:
            write_json(self.dir / "stages.json", self.results)  # the stage is done...
            Checkpointer.clear(self.dir)  # ...so its checkpoint is no longer needed
        barrier()
        return self.results[stage]

    def _prune_metrics(self, stage: str, epochs_kept: int) -> None:
        """Drop metrics lines a resumed run will write again (epochs after its checkpoint)."""
        if not self.main or not self.metrics.exists():
            return
        keep = []
        for line in self.metrics.read_text().splitlines():
            record = json.loads(line)
            if record["stage"] in self.results or (record["stage"] == stage and record["epoch"] <= epochs_kept):
                keep.append(line)
        write_text(self.metrics, "".join(f"{line}\n" for line in keep))

    def save(self, distiller: Distiller, stem: str) -> None:
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
            self.results = json.loads((self.dir / "stages.json").read_text())

    def _check_and_create_folder(self) -> None:
        finished = (self.dir / "summary.json").exists()
        started = (self.dir / "config.yaml").exists()
        if finished:
            raise DistillError(
                f"'{self.dir}' already holds a finished run. Choose another --out, or delete it."
            )
        if self.resume and not started:
            raise DistillError(f"'{self.dir}' holds no run to resume (no config.yaml there).")
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

    def run(self) -> dict:
        cfg = self.cfg
        configure(cfg.seed, cfg.train.deterministic, cfg.train.threads)
        init_distributed(self.device)
        data = build_data(cfg.data, seed=cfg.seed)
        for loader in (data.teacher_train, data.train, data.val, data.test):
            loader.shard(rank(), world_size())
        terms, ce_weight = build_terms(cfg)
        self._preflight(data, terms)
        if cfg.log.tensorboard and self.main:
            self.tensorboard = _summary_writer(self.dir / "tensorboard")
        self._prepare_folder()
        c = data.counts
        self.log(
            f"[bold]{cfg.name}[/bold] on {cfg.data.name}: {c['train']} training samples, "
            f"{c['labelled']} labelled for the students ({100 * c['labelled'] / (c['labelled'] + c['unlabelled']):.0f}%), "
            f"{c['val']} validation, {c['test']} test. Device {self.device}. Run folder {self.dir}"
        )
        if c["unlabelled"]:
            self.log(
                "Transfer set: the teacher trains on every training label; the students see labels "
                f"only on {c['labelled']} samples, and the distilled student also learns from the "
                f"teacher's soft targets on all {c['labelled'] + c['unlabelled']}."
            )
        teacher = self.teacher_stage(data)
        for stage in ("scratch", "distill"):
            if stage not in cfg.stages or stage in self.results:
                continue
            seed_everything(cfg.seed)  # same initial weights for scratch and distilled students
            student = create_model(cfg.student.model, data.num_classes, data.in_shape, **cfg.student.kwargs)
            if stage == "scratch":
                distiller = Distiller(None, student, ce_weight=1.0)
            else:
                distiller = Distiller(teacher, student, terms, ce_weight)
            self.results[stage] = {"params": count_parameters(student)}
            if stage == "distill":
                self.results[stage]["cache"] = self._open_cache(distiller, data)
            self._seed_training()
            self.train_stage(stage, distiller, data.train, data)
        summary = self.summary(data)
        if self.main:
            write_json(self.dir / "summary.json", summary)
        return summary

    def _open_cache(self, distiller: Distiller, data: Data) -> str:
        cfg = self.cfg
        _, why = open_cache(
            cfg.cache, distiller, data.train, augment=data.augment, seed=cfg.seed,
            epochs=cfg.train.epochs, dtype=cfg.cache_dtype, topk=cfg.cache_topk,
            path=Path(cfg.cache_dir) if cfg.cache_dir else self.dir / "teacher_cache",
        )
        self.log(f"Teacher cache: {why}")
        return why

    def _seed_training(self) -> None:
        """The same dropout draws for every stage's training; each DDP process its own."""
        seed_everything(self.cfg.seed + 1 + 7919 * rank())

    def _preflight(self, data: Data, terms: dict) -> None:
        """Catch config, model and layer-path mistakes before any training time is spent."""
        cfg = self.cfg
        has_teacher = "teacher" in cfg.stages or bool(cfg.teacher.checkpoint)
        if "distill" in cfg.stages and not has_teacher:
            raise DistillError(
                "The distill stage needs a teacher: add 'teacher' to stages, or set "
                "teacher.checkpoint to a trained teacher's weights."
            )
        if "distill" in cfg.stages and not terms:
            raise DistillError("The distill stage needs a distillation term, e.g. loss.kd.weight=0.9.")
        cpu = torch.device("cpu")
        student = create_model(cfg.student.model, data.num_classes, data.in_shape, **cfg.student.kwargs)
        _check_classes(student, "student", data, cpu)
        if has_teacher:
            teacher = create_model(cfg.teacher.model, data.num_classes, data.in_shape, **cfg.teacher.kwargs)
            _check_classes(teacher, "teacher", data, cpu)
            if "distill" in cfg.stages:
                Distiller(teacher, student, terms)  # resolves every hooked layer path

    def teacher_stage(self, data: Data) -> nn.Module | None:
        cfg = self.cfg
        if "teacher" not in cfg.stages and not cfg.teacher.checkpoint:
            return None
        seed_everything(cfg.seed)
        teacher = create_model(cfg.teacher.model, data.num_classes, data.in_shape, **cfg.teacher.kwargs)
        if "teacher" in self.results:  # finished before a resume
            load_weights(teacher, self.dir / "teacher.safetensors")
        elif cfg.teacher.checkpoint:
            load_weights(teacher, cfg.teacher.checkpoint, trust=self.trust)
            teacher.to(self.device)
            self.results["teacher"] = {
                "params": count_parameters(teacher), "checkpoint": cfg.teacher.checkpoint,
                "val_acc": evaluate(teacher, data.val, self.device)["acc"],
                "test_acc": evaluate(teacher, data.test, self.device)["acc"],
            }
        else:
            self.results["teacher"] = {"params": count_parameters(teacher)}
            self._seed_training()
            self.train_stage("teacher", Distiller(None, teacher, ce_weight=1.0), data.teacher_train, data)
        return teacher.to(self.device, DTYPES[cfg.train.teacher_dtype]).eval()

    def summary(self, data: Data) -> dict:
        stages = self.results
        gain = None
        if "scratch" in stages and "distill" in stages:
            gain = {
                key: stages["distill"][key] - stages["scratch"][key]
                for key in ("test_acc", "val_acc", "last_test_acc")
            }
        return {
            "schema": 1,
            "name": self.cfg.name,
            "seed": self.cfg.seed,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": str(self.device),
            "processes": world_size(),
            "precision": self.cfg.train.precision,
            "data": {"name": self.cfg.data.name, "num_classes": data.num_classes, **data.counts},
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
    with stop_handlers():
        summary = Run(cfg, out, quiet, resume, trust_checkpoint).run()
    summary["wall_seconds"] = time.perf_counter() - start
    if is_main():
        write_json(out / "summary.json", summary)
    return summary
