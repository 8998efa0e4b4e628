"""`task: classification` (the default): classifiers, from built-in or on-disk data.

A task gives `stages.Run` its data, models, Distiller, evaluation and cache; the run folder,
stages, checkpoints and summary are shared. `metrics` are the evaluation keys recorded per
stage (val_<m>, test_<m>, last_val_<m>, last_test_<m>); `selection` picks the best epoch on
validation and is the metric tables and the distilled-minus-scratch gain report.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ..cache import open_cache
from ..cache_plan import cache_size, preview
from ..cache_plan import plan as plan_cache
from ..classifier_run import create_classifier
from ..classifier_run import load_run as load_classifier_run
from ..contracts import Selection
from ..data import Data, build_data, fingerprint
from ..distiller import Distiller
from ..ensemble import per_teacher_terms
from ..errors import DistillError
from ..export import FORMATS
from ..export import export as export_classifier
from ..metrics import evaluate_classifier
from ..models.hf import is_hf_folder
from ..models.outputs import logits_of
from ..raw_inputs import class_names, preprocess_record
from ..report import evaluate_target, evaluation_table
from ..report import write_report as write_classifier_report
from ..runtime import DTYPES
from ..schedule import planned_epochs
from ..stage_plan import assistants, members, peers
from ..stores import default_memory_budget
from ..terms import build_terms
from ..trust import NO_TRUST, Trust


def _check_classes(model: nn.Module, role: str, data: Data, x: torch.Tensor) -> None:
    try:
        with torch.no_grad():
            out = logits_of(model.eval()(x), role)
    except DistillError:
        raise
    except Exception as e:  # a user model's forward may raise anything
        raise DistillError(
            f"The {role} cannot take this data's inputs of shape {tuple(data.in_shape)}: its "
            f"forward raised {type(e).__name__}: {e}. Fix the {role}'s forward, or use a {role} "
            f"built for inputs of shape {tuple(data.in_shape)}."
        ) from None
    if out.shape[-1] != data.num_classes:
        raise DistillError(
            f"The {role} outputs {out.shape[-1]} classes but the data has {data.num_classes}. "
            f"Use a {role} built for {data.num_classes} classes."
        )


def _shapes(outputs) -> str:
    return ", ".join(f"{k} {tuple(v.shape)}" for k, v in outputs.features.items()) or "none"


def _probe_term(teacher, student, name: str, term: nn.Module, batch: list) -> None:
    """One distill step with term `name` alone on `batch`, as training would run it: the
    Distiller's setup probe (projector sizes), then its forward and loss; eval mode (BatchNorm
    statistics and dropout untouched), no gradient, on a copy of the term (a CRD queue stays
    empty). A mistake in the term's layers is a DistillError naming the term and the shapes."""
    what = f"loss.{name} ({type(term).__name__}: {term.extra_repr()})"
    distiller = Distiller(teacher, student, {name: (copy.deepcopy(term), 1.0)})
    distiller.eval()
    part, role, x = distiller.part, "student", batch.inputs
    try:
        with torch.no_grad():
            s_out = part.student_outputs(student, x)
            role = "teacher"
            t_out = distiller.live.outputs(x)
            role = None
            distiller.setup(batch)
            distiller(batch)
    except DistillError as e:  # e.g. a hooked module that never runs, or runs twice
        raise DistillError(f"{what}: {e}") from None
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
        if role is not None:  # the bare forward ran (_check_classes): the hooks broke it
            hint = (" A ':input' path reads the module's first positional input, so the module "
                    "must be called with one (not keywords only); hook its output or another "
                    "module instead." if ":input" in what else " Hook another module.")
            raise DistillError(f"{what}: the {role}'s forward raised {error} once this term's "
                               f"layers were hooked (it runs without them).{hint}") from None
        raise DistillError(
            f"{what} cannot be computed on these layers: {error}. Captured features (2 samples): "
            f"student {_shapes(s_out)}; teacher {_shapes(t_out)}. Choose a student/teacher layer "
            "pair whose shapes this method takes (`distill models` lists module paths)."
        ) from None
    finally:
        part.remove_hooks(distiller)


class ClassificationTask:
    name = "classification"
    metrics = ("acc",)
    selection = Selection("acc")  # the best epoch: highest validation accuracy

    def __init__(self, cfg, trust_checkpoint: bool = False):
        self.cfg = cfg
        self.trust_checkpoint = trust_checkpoint  # a model folder's pickled weights may be loaded
        self.cache_views: int | None = None  # preflight: the distill stage's cache plan
        self.cache_note: str | None = None  # and its size, said in the run's first lines

    def build_data(self, seed: int) -> Data:
        return build_data(self.cfg.data, seed=seed)

    def build_terms(self) -> tuple[dict, float]:
        """The loss terms; with several teachers and ensemble.targets=per_teacher, each logit
        term once per teacher (distill.ensemble)."""
        terms, ce_weight = build_terms(self.cfg)
        if members(self.cfg) and self.cfg.ensemble.targets == "per_teacher":
            terms = per_teacher_terms(terms, {t.name: t.weight for t in self.cfg.teachers})
        return terms, ce_weight

    def create_model(self, role: str, data: Data) -> nn.Module:
        return create_classifier(self.cfg, role, data, self.trust_checkpoint)

    def pretrained_teacher(self) -> str | None:
        """Where a ready teacher comes from when the teacher stage does not train one:
        teacher.checkpoint, or a save_pretrained folder as teacher.model (with a teacher
        stage, that stage fine-tunes the folder's model on the data first)."""
        t = self.cfg.teacher
        return t.checkpoint or (t.model if is_hf_folder(t.model) and "teacher" not in self.cfg.stages else None)

    def preflight(self, data: Data, terms: dict, has_teacher: bool) -> None:
        """Before any stage trains: with a distill stage, the cache settings (cache_plan.plan,
        as open_cache will decide); each model's forward on 2 samples (CPU), and with a distill
        stage one distill step per term on fresh models (discarded), so a layer or cache
        mistake is not found after the teacher and scratch stages have trained."""
        cfg = self.cfg
        if has_teacher and terms and "distill" in cfg.stages:
            epochs = planned_epochs(cfg.train, len(data.train))  # max_steps: the epochs it begins
            self.cache_views, _ = plan_cache(cfg.cache.mode, data.train.augment, epochs=epochs,
                                             dtype=cfg.cache.dtype, topk=cfg.cache.topk)
        batch = next(iter(data.val)).rows(2)  # val: no shuffle, no augmentation draw
        student = self.create_model("student", data)
        _check_classes(student, "student", data, batch.inputs)
        for stage in [*members(cfg), *assistants(cfg), *peers(cfg)]:  # each other model on its own
            _check_classes(self.create_model(stage, data), stage, data, batch.inputs)
        if has_teacher:
            teacher = self.create_model("teacher", data)
            _check_classes(teacher, "teacher", data, batch.inputs)
            if "distill" in self.cfg.stages:
                for name, (term, _) in terms.items():  # each resolves its layer paths
                    _probe_term(teacher, student, name, term, batch)
                if self.cache_views:
                    self.cache_note = self._preview(data, teacher, student, terms, batch.inputs)

    def _preview(self, data: Data, teacher, student, terms: dict, x: torch.Tensor) -> str:
        """The distill stage's cache and the size it can grow to, from the teacher's output
        shapes on fresh models (said before training; what can never fit is refused now)."""
        cfg = self.cfg
        copies = {name: (copy.deepcopy(term), w) for name, (term, w) in terms.items()}
        distiller = Distiller(teacher, student, copies)
        try:
            with torch.no_grad():
                out = distiller.live.outputs(x)
        finally:
            distiller.part.remove_hooks(distiller)
        shapes = {"logits": tuple(out.logits.shape[1:])}
        shapes |= {k: tuple(v.shape[1:]) for k, v in out.features.items()}
        n = data.train.num_samples
        nbytes = cache_size(n, self.cache_views, shapes, cfg.cache.dtype, cfg.cache.topk)
        return preview(cfg.cache.mode, self.cache_views, nbytes, n, default_memory_budget(),
                       Path(cfg.cache.dir) if cfg.cache.dir else None)

    def distiller(self, teacher, student, terms: dict, ce_weight: float) -> Distiller:
        return Distiller(teacher, student, terms, ce_weight)

    def evaluate(self, model: nn.Module, loader, device) -> dict:
        return evaluate_classifier(model, loader, device)

    def ready_teacher(self, teacher: nn.Module, device) -> nn.Module:
        return teacher.to(device, DTYPES[self.cfg.train.teacher_dtype]).eval()

    def open_cache(self, distiller, data: Data, default_dir: Path, quiet: bool) -> str:
        """The distill stage's teacher cache: in cache.dir, else (disk) in `default_dir`."""
        cfg = self.cfg
        _, why = open_cache(
            cfg.cache.mode, distiller, data.train,
            epochs=planned_epochs(cfg.train, len(data.train)), dtype=cfg.cache.dtype, topk=cfg.cache.topk,
            path=Path(cfg.cache.dir) if cfg.cache.dir else default_dir,
        )
        return why

    def describe(self, data: Data) -> list[str]:
        cfg, c = self.cfg, data.counts
        lines = [
            f"[bold]{cfg.name}[/bold] on {cfg.data.name}: {c['train']} training samples, "
            f"{c['labelled']} labelled for the students ({100 * c['labelled'] / (c['labelled'] + c['unlabelled']):.0f}%), "
            f"{c['val']} validation, {c['test']} test."
        ]
        if c["unlabelled"] and peers(cfg):
            lines.append(f"Transfer set: the students see labels only on {c['labelled']} samples; in mutual "
                         f"learning each also learns from the others' predictions on all "
                         f"{c['labelled'] + c['unlabelled']}.")
        elif c["unlabelled"]:
            lines.append(
                "Transfer set: the teacher trains on every training label; the students see labels "
                f"only on {c['labelled']} samples, and the distilled student also learns from the "
                f"teacher's soft targets on all {c['labelled'] + c['unlabelled']}."
            )
        if data.loader_note:
            lines.append(f"Loader: {data.loader_note}.")
        if self.cache_note:
            lines.append(f"Teacher cache for the distill stage: {self.cache_note}.")
        return lines

    def data_summary(self, data: Data) -> dict:
        return {"num_classes": data.num_classes, **data.counts, "sha256": fingerprint(data),
                "loader": data.loader, "normalization": data.stats, "class_names": class_names(data),
                "preprocess": preprocess_record(self.cfg.data, data)}  # what a raw input needs (distill export)

    # ---------------------------------------------------------------- a run folder read back

    export_formats = FORMATS

    def load_run(self, run_dir: Path, stage: str, trust: Trust = NO_TRUST, data: Data | None = None,
                 last: bool = False) -> tuple[nn.Module, Data]:
        """A stage's classifier with its weights, and the run's Data (distill.classifier_run)."""
        return load_classifier_run(run_dir, stage, trust, data, last)

    def evaluate_run(self, target: Path, overrides=(), split: str = "test", trust: Trust = NO_TRUST) -> dict:
        """Accuracy, top-5, NLL, ECE and agreement with the teacher of the saved models."""
        return evaluate_target(target, overrides, split, device="auto", trust=trust)

    def evaluation_table(self, evaluation: dict):
        return evaluation_table(evaluation)

    def export(self, run_dir: Path, fmt: str, out: Path | None = None, stage: str = "distill",
               trust: Trust = NO_TRUST, quantize: str | None = None) -> dict:
        """An export folder (ONNX or TorchScript taking raw inputs, labels.json, preprocess.json;
        `quantize="int8"`: model.int8.onnx too), or the safetensors weights (distill.export)."""
        return export_classifier(run_dir, fmt, out, stage, trust, quantize)

    def write_report(self, run_dir: Path, trust: Trust = NO_TRUST) -> Path:
        """report.md, report.json and PNGs: evaluation, calibration, agreement, cost (distill.report)."""
        return write_classifier_report(run_dir, trust=trust)
