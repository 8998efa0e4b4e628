"""A run, top to bottom: teacher, scratch student, distilled student; then the summary.

Answers one question: did distillation help? The scratch and distilled students share the
architecture, the initial weights (the seed is reset before each), the data order and the
schedule; only the teacher's terms differ. Selection is on validation; test is only reported.
The run folder's files (metrics, weights, resume records, summary) are run_files.RunFolder's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from torch import nn

from .classifier_run import weights_of
from .config import RunBase, RunConfig, absolute_paths, stage_train
from .engine import fit
from .errors import DistillError
from .io import load_weights
from .models import count_parameters
from .models.hf import is_hf_folder
from .mutual import Cohort, logit_terms_only
from .progress import StageProgress
from .resume import resumable
from .run_files import RunFolder, tensorboard_class
from .run_folder import check, legacy
from .run_summary import data_id, default_run_dir, schedule_line, summarize
from .runtime import (
    configure,
    init_distributed,
    rank,
    resolve_device,
    seed_everything,
    stop_handlers,
    world_size,
)
from .schedule import counts_steps
from .stage_plan import (
    chain,
    has_teacher_stage,
    members,
    method,
    peer_number,
    peers,
    scratch_stages,
    spec_of,
    student_stages,
    teacher_of,
)
from .tasks import make_task

MODEL_SEED_STEP = 1_000_003  # seed offset of the i-th of several teachers or peers
EpochHook = Callable[[str, dict], None]


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
        first = chain(self.cfg)[0]
        for stage in self._students_left():
            if stage in scratch_stages(self.cfg):
                self.scratch_stage(stage, data)
            elif peers(self.cfg):
                self.mutual_stage(data, ce_weight)
            else:  # a link of the chain; the first keeps the terms built (and checked) above
                link_terms = terms if stage == first else self.task.build_terms()[0]
                self.link_stage(stage, data, self._teacher_of(stage, teacher, data), link_terms, ce_weight)
        return summarize(self.cfg, self.task, self.folder.results, data, self.device)  # `run` writes it, once, with the wall time

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
        given = {role: getattr(cfg, role).checkpoint for role in ("teacher", "student")}
        given |= {f"teachers[{t.name}]": t.checkpoint for t in (cfg.teachers if members(cfg) else [])}
        for role, path in given.items():
            if path and not Path(path).is_file():
                raise DistillError(f"{role}.checkpoint '{path}' is not a file. Give the path of "
                                   f"saved weights (.safetensors, .pt, .pth), or {role}.checkpoint=null.")
        # several teachers without a teacher stage all have checkpoints (stage_plan.check_plan)
        has_teacher = has_teacher_stage(cfg) and ("teacher" in cfg.stages or bool(self.task.pretrained_teacher())
                                                  or bool(members(cfg)))
        if "distill" in cfg.stages and not has_teacher and has_teacher_stage(cfg):
            raise DistillError(
                "The distill stage needs a teacher: add 'teacher' to stages, or set "
                "teacher.checkpoint to a trained teacher's weights."
            )
        if "distill" in cfg.stages and not terms:
            raise DistillError("The distill stage needs a distillation term, e.g. loss.kd.weight=0.9.")
        if method(cfg) in ("assistants", "mutual.peers"):
            logit_terms_only(terms, method(cfg))
        if cfg.cache.mode == "disk" and cfg.cache.dir and "distill" in cfg.stages:  # a folder of yours: now, not after training
            cache, run = Path(cfg.cache.dir).resolve(), self.folder.dir.resolve()
            if cache == run or cache in run.parents:
                where = "is this run's folder" if cache == run else f"holds this run's folder '{run}'"
                raise DistillError(f"cache.dir '{cfg.cache.dir}' {where}; the teacher cache needs a "
                                   "folder of its own. Leave cache.dir unset to keep it in "
                                   "<run folder>/teacher_cache, or choose another folder.")
            check(cfg.cache.dir, "cache", "cache.dir", adopt=legacy(cfg.cache.dir, "cache"))
        self.task.preflight(data, terms, has_teacher)
        for t in cfg.teachers if members(cfg) else []:  # a bad one found now, not after the others train
            if t.checkpoint:
                load_weights(self.task.create_model(f"teacher-{t.name}", data), t.checkpoint, trust=self.trust)

    def _open_folder(self, data) -> None:
        """Check, create and lock the run folder; say what this run is about to do."""
        cfg, folder = self.cfg, self.folder
        # the writer's class is checked before the folder exists; the writer (which creates
        # its log folder) only after the folder checks, so a refused run writes nothing
        writer = tensorboard_class() if cfg.log.tensorboard and folder.main else None
        folder.open(cfg)
        self.data_id = data_id(cfg, self.task.data_summary(data).get("sha256"))
        if writer is not None:
            folder.start_tensorboard(writer)
        lines = self.task.describe(data)
        lines[0] += f" Device {self.device}. Run folder {folder.dir}"
        for line in [*lines, schedule_line(self.cfg, self.task)]:
            self.log(line)

    def teacher_stage(self, data) -> nn.Module | None:
        """The teacher, ready to distill from: trained here, loaded back after a resume, or a
        pretrained one (evaluated once); with several teachers their Ensemble; None when the
        run has no teacher."""
        cfg, task, results = self.cfg, self.task, self.folder.results
        pretrained = task.pretrained_teacher()
        if not has_teacher_stage(cfg) or ("teacher" not in cfg.stages and not pretrained and not members(cfg)):
            return None
        if members(cfg):
            return task.ready_teacher(self._ensemble(data), self.device)
        seed_everything(cfg.seed)
        teacher = task.create_model("teacher", data)
        if "teacher" in results:  # finished before a resume: trained here, or its checkpoint
            path = weights_of(self.folder.dir, cfg, "teacher")
            if path is None:
                raise DistillError(f"'{self.folder.dir}' records its teacher as finished, but neither "
                                   "teacher.safetensors nor teacher.checkpoint is there any more. "
                                   "Restore the file, or start a new run.")
            if not path.is_dir():  # a save_pretrained teacher came with its weights
                load_weights(teacher, path, trust=self.trust)
        elif pretrained:
            if cfg.teacher.checkpoint:
                self._load_checkpoint(teacher, "teacher")
            self._record_pretrained("teacher", teacher, pretrained, data)
        else:
            self._train_teacher("teacher", teacher, data)
        return task.ready_teacher(teacher, self.device)

    def _train_teacher(self, stage: str, teacher: nn.Module, data) -> None:
        self.folder.results[stage] = {"params": count_parameters(teacher)}
        self._seed_training()
        self.train_stage(stage, self.task.distiller(None, teacher, {}, 1.0), data.teacher_train, data)

    def _ensemble(self, data) -> nn.Module:
        """Several teachers: each trained (or loaded from its checkpoint or folder) as its own
        stage teacher-<name>, then their Ensemble evaluated and saved as the teacher stage."""
        cfg, task, results = self.cfg, self.task, self.folder.results
        for i, entry in enumerate(cfg.teachers):
            stage = f"teacher-{entry.name}"
            if stage in results:
                continue
            seed_everything(cfg.seed + MODEL_SEED_STEP * i)  # two teachers of one architecture differ
            model = task.create_model(stage, data)
            if entry.checkpoint or is_hf_folder(entry.model):
                if entry.checkpoint:
                    self.log(f"Teacher {entry.name} checkpoint: {load_weights(model, entry.checkpoint, trust=self.trust)}")
                self._record_pretrained(stage, model, entry.checkpoint or entry.model, data)
                self.folder.finish_stage()
            else:
                self._train_teacher(stage, model, data)
        ensemble = task.create_model("teacher", data)
        for entry in cfg.teachers:
            path = weights_of(self.folder.dir, cfg, f"teacher-{entry.name}")
            if path is not None and not path.is_dir():  # a folder's weights came with the model
                load_weights(ensemble.get_submodule(entry.name), path, trust=self.trust)
        if "teacher" not in results:
            self._record_pretrained("teacher", ensemble, None, data)
            results["teacher"]["members"] = [t.name for t in cfg.teachers]
            self.folder.save_model(ensemble, "teacher")
            self.folder.finish_stage()
        return ensemble

    def _record_pretrained(self, stage: str, teacher: nn.Module, source: str | None, data) -> None:
        """A teacher not trained here (a checkpoint, a folder, an ensemble): its val and test
        metrics recorded."""
        task = self.task
        teacher.to(self.device)
        val, test = (task.evaluate(teacher, loader, self.device) for loader in (data.val, data.test))
        record = self.folder.results[stage] = {"params": count_parameters(teacher)}
        if source:
            record["checkpoint"] = source
        for m in task.metrics:
            record.update({f"val_{m}": val[m], f"test_{m}": test[m]})

    def _students_left(self) -> list[str]:
        """The configured student stages a resume has not already finished."""
        return [s for s in student_stages(self.cfg) if s not in self.folder.results]

    def _new_student(self, stage: str, data) -> nn.Module:
        """A stage's model, from the same initial weights for every stage of one architecture
        (a peer of mutual learning has its own, so the cohort does not start identical)."""
        cfg = self.cfg
        seed_everything(cfg.seed + MODEL_SEED_STEP * peer_number(stage))
        student = self.task.create_model(stage, data)
        if cfg.student.checkpoint and spec_of(cfg, stage) is cfg.student:  # the pair stays paired
            self._load_checkpoint(student, "student")
        return student

    def scratch_stage(self, stage: str, data) -> None:
        """A student trained on its labels alone: the baseline its distilled twin is paired with."""
        student = self._new_student(stage, data)
        self.folder.results[stage] = {"params": count_parameters(student)}
        self._seed_training()
        self.train_stage(stage, self.task.distiller(None, student, {}, 1.0), data.train, data)

    def _teacher_of(self, stage: str, teacher: nn.Module | None, data) -> nn.Module | None:
        """Who teaches a link of the chain: the teacher, or the previous link's selected model."""
        source = teacher_of(self.cfg, stage)
        if source == "teacher":
            return teacher
        model = self.task.create_model(source, data)
        load_weights(model, self.folder.dir / f"{source}.safetensors")
        return self.task.ready_teacher(model, self.device)

    def link_stage(self, stage: str, data, teacher: nn.Module, terms: dict, ce_weight: float) -> None:
        """A student distilled from `teacher` (the distill stage, an assistant, a generation)."""
        task, results = self.task, self.folder.results
        student = self._new_student(stage, data)
        distiller = task.distiller(teacher, student, terms, ce_weight)
        results[stage] = {"params": count_parameters(student)}
        if stage != chain(self.cfg)[0]:
            results[stage]["taught_by"] = teacher_of(self.cfg, stage)
        cache_dir = self.folder.dir / ("teacher_cache" if stage == "distill" else f"teacher_cache-{stage}")
        why = task.open_cache(distiller, data, cache_dir, self.quiet)
        self.log(f"Teacher cache{'' if stage == 'distill' else f' ({stage})'}: {why}")
        results[stage]["cache"] = why
        self._seed_training()
        self.train_stage(stage, distiller, data.train, data)

    def mutual_stage(self, data, ce_weight: float) -> None:
        """Deep mutual learning: the student and its peers trained together (distill.mutual),
        each from the initial weights of its own scratch twin."""
        results, names = self.folder.results, peers(self.cfg)
        terms = [self.task.build_terms()[0] for _ in range(len(names) + 1)]
        students = [self._new_student(stage, data) for stage in ("distill", *names)]
        for stage, model in zip(("distill", *names), students, strict=True):
            results[stage] = {"params": count_parameters(model)}
        results["distill"]["cohort"] = ["distill", *names]
        self._seed_training()
        self.train_stage("distill", Cohort(students, terms, ce_weight, names), data.train, data)

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
        """Save the last epoch's and the selected epoch's weights; record both on val and test
        (for a cohort, every student: the peers' metrics are logged as <peer>_<metric>)."""
        task, device = self.task, self.device
        trained = [(stage, distiller.student, "")]
        if isinstance(distiller, Cohort):
            trained += [(name, peer, f"{name}_") for name, peer in zip(distiller.names, distiller.peers, strict=True)]
        self.folder.save(distiller, f"{stage}-last")
        last = {}
        for name, model, _ in trained:
            if name != stage:  # the student's went with the distiller's save
                self.folder.save_model(model, f"{name}-last")
            last[name] = task.evaluate(model, data.test, device)
        distiller.load_state_dict(result.best_state)
        self.folder.save(distiller, stage)
        for name, model, key in trained:
            if name != stage:
                self.folder.save_model(model, name)
            test = task.evaluate(model, data.test, device)
            record = self.folder.results[name]
            record["best_epoch"], record["best_step"] = result.best_epoch, result.best_step
            for m in task.metrics:
                record.update({f"val_{m}": result.best_val[key + m], f"test_{m}": test[m],
                               f"last_val_{m}": result.history[-1][f"val_{key}{m}"], f"last_test_{m}": last[name][m]})
            record["seconds"] = sum(r["seconds"] for r in result.history)
        return self.folder.results[stage]

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
