"""The Distiller: a frozen teacher, a student, and named, weighted loss terms.

    total = ce_weight * CE(student, labels) + sum_k weight_k * term_k(student, teacher, batch)

One class for every kind of run. The teacher is held outside the module tree on purpose: it is
not in `parameters()`, so it is never handed to an optimizer, never saved with the student and
never wrapped by DDP. The student and every loss term (with any projector it owns) are
submodules, so one optimizer and one DDP wrapper cover exactly what trains.

What differs between kinds of run sits in a small `part` (a `contracts.StepPart`): how the
teacher's targets and the student's outputs come out, what the unit of a mean is, how CE is
taken, how the student is evaluated. Classifiers' part is `ClassifierPart` (below); language
models' is `distill.lm.distiller.TokenPart`. The teacher's targets come from `source`, a
`contracts.TeacherSource`: the live teacher (the part's default), or a cache attached with
`attach_source`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .contracts import (
    LOGGED_NAMES,
    UNLABELLED,
    Batch,
    Outputs,
    Selection,
    StepOutput,
    StepPart,
    TeacherSource,
    as_batch,
)
from .errors import DistillError
from .hooks import FeatureCapture
from .metrics import evaluate_classifier
from .models.outputs import logits_of
from .sources import LiveTeacher
from .terms import declared

__all__ = ["UNLABELLED", "ClassifierPart", "Distiller", "Outputs", "ce_loss"]


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the labelled samples of the batch; 0 if there are none.

    Unlabelled samples (label -1) are ignored; a mean over zero samples would be NaN.
    """
    labelled = labels != UNLABELLED
    total = F.cross_entropy(logits.float(), labels, ignore_index=UNLABELLED, reduction="sum")
    return total / labelled.sum().clamp(min=1)


def _check_args(teacher, student, terms, ce_weight) -> None:
    """Distiller's arguments, checked before anything is built from them."""
    for role, model in (("teacher", teacher), ("student", student)):
        if not isinstance(model, nn.Module) and not (role == "teacher" and model is None):
            raise DistillError(f"Distiller's {role} must be a torch.nn.Module, not a "
                               f"{type(model).__name__}.")
    if not isinstance(terms, dict):
        raise DistillError(f"Distiller's terms must be a dict {{name: (loss_module, weight)}}, not "
                           f"a {type(terms).__name__}.")
    weights = {"ce_weight": ce_weight}
    for name, entry in terms.items():
        if not (isinstance(entry, tuple | list) and len(entry) == 2 and isinstance(entry[0], nn.Module)):
            raise DistillError(f"Distiller's term {name!r} must be a (loss_module, weight) pair, e.g. "
                               f"{{{name!r}: (KD(T=4.0), 0.9)}}; got a {type(entry).__name__}.")
        weights[f"term {name!r}'s weight"] = entry[1]
    for what, w in weights.items():
        try:
            finite = math.isfinite(float(w))
        except (TypeError, ValueError):
            finite = False
        if not finite:
            raise DistillError(f"Distiller's {what} must be a finite number (got {w!r}); use 0 to "
                               "switch a term off.")
    taken = [name for name in terms if name in LOGGED_NAMES]
    if taken:
        raise DistillError(f"Distiller's term name(s) {', '.join(map(repr, taken))} are taken: terms are "
                           f"logged as train_<name> beside {', '.join(LOGGED_NAMES)}. Rename the term.")
    if teacher is not None and teacher is student:
        raise DistillError("Distiller's teacher and student are the same module; the teacher is "
                           "frozen, so nothing would train. Pass a separate student (e.g. a fresh model).")
    if terms and teacher is None:
        raise ValueError("distillation terms need a teacher")


class Distiller(nn.Module):
    """Student + loss terms trained against a frozen teacher (a `contracts.Distiller`).

    Args:
        teacher: the trained teacher, or None to train the student on labels alone.
        student: the model being trained.
        terms: {name: (loss_module, weight)}; each module maps (student outputs, teacher
            targets, batch) to a scalar.
        ce_weight: weight of the cross-entropy term on the labels.
        part: what is specific to the kind of model (default: classifiers).
    """

    def __init__(self, teacher: nn.Module | None, student: nn.Module,
                 terms: dict[str, tuple[nn.Module, float]] | None = None, ce_weight: float = 1.0,
                 part: StepPart | None = None):
        super().__init__()
        terms = terms or {}
        _check_args(teacher, student, terms, ce_weight)
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        self.__dict__["teacher"] = teacher  # not registered: see module docstring
        self.student = student
        self.terms = nn.ModuleDict({name: module for name, (module, _) in terms.items()})
        self.weights = {name: float(weight) for name, (_, weight) in terms.items()}
        self.ce_weight = float(ce_weight)
        self.declared = {name: declared(m) for name, m in self.terms.items()}
        self.part = part if part is not None else ClassifierPart()
        self.live = self.part.bind(self)  # the live teacher source (None without a teacher)
        # where targets come from: the live teacher, unless a cache is attached; None without
        # terms (nothing to ask the teacher)
        self.source: TeacherSource | None = self.live if terms else None
        self.needs_setup = any(d.setup is not None for d in self.declared.values())
        self.selection: Selection = self.part.selection

    def attach_source(self, source: TeacherSource) -> None:
        """Take the teacher's targets from `source` (a cache or a stored top-k teacher)."""
        if not self.terms:
            raise DistillError("a teacher source serves distillation terms; this Distiller has none")
        if not isinstance(source, TeacherSource):
            raise DistillError(f"attach_source takes a teacher source (targets, set_epoch, reference), "
                               f"e.g. a distill.cache.TeacherCache; got a {type(source).__name__}.")
        self.source = source

    def drop_teacher(self) -> None:
        """Free the teacher once every target it would give comes from the attached source."""
        if self.source is None or self.source is self.live:
            raise ValueError("drop_teacher needs a stored teacher source attached first (attach_source)")
        self.__dict__["teacher"] = None
        self.live = None  # it held the teacher too

    def _apply(self, fn, *args, **kwargs):
        # .to(device) / .double() move the teacher along with the registered modules.
        if self.teacher is not None:
            self.teacher._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher stays in eval mode (dropout off, BN frozen)
        return self

    @torch.no_grad()
    def setup(self, batch: Batch) -> None:
        """Probe feature shapes with one batch and let each term size its projector. Call once
        before building the optimizer (`fit` does it when `needs_setup`)."""
        batch = as_batch(batch, "Distiller.setup's batch")
        self.part.setup(self, batch)
        self.to(batch.inputs.device)
        self.needs_setup = False

    def set_epoch(self, epoch: int) -> None:
        """Tell terms with a schedule (DKD's warm-up) the current epoch, counted from 0, and the
        teacher source (a cache flushes at epoch boundaries)."""
        for d in self.declared.values():
            if d.set_epoch is not None:
                d.set_epoch(epoch)
        if self.source is not None:
            self.source.set_epoch(epoch)

    def source_reference(self) -> dict | None:
        """What a checkpoint records about the teacher source (a cache's identity)."""
        return self.source.reference() if self.source is not None else None

    def prepare(self, batch: Batch, epoch: int, step: int) -> Batch:
        """The batch that step `step` trains on (an LM's on-policy samples replace some)."""
        return self.part.prepare(self, batch, epoch, step)

    def count(self, batch: Batch) -> torch.Tensor:
        """The units a batch's loss is a mean over: under gradient accumulation the engine
        weights each micro-batch by its share of them."""
        return self.part.count(batch)

    def evaluate(self, loader, device) -> dict[str, float]:
        return self.part.evaluate(self.student, loader, device)

    def explain_nonfinite(self, batch: Batch, out: StepOutput, first: bool) -> str:
        return self.part.explain_nonfinite(self, batch, out, first)

    def forward(self, batch: Batch) -> StepOutput:
        """One training step's loss and its unweighted terms (a tuple (inputs, labels[, index])
        is taken as a Batch).

        The teacher runs before the student. The same ops on the same data either way (the
        teacher is in eval mode and draws no random numbers, so the student's dropout masks
        are the same too), but run after the student it works while the student's autograd
        graph and saved activations hold the top of the heap: glibc's allocator places the
        teacher's no-grad temporaries above them and hands those pages back to the OS when
        they are freed, so every step page-faults them in again (resnet56 -> resnet20, batch
        64, in `fit`: ~5-6k minor faults per teacher forward, none with the teacher first;
        epochs 1.05x slower, 1.09x for resnet32x4 -> resnet8x4; see the README).
        """
        batch = as_batch(batch, "the batch")
        with torch.no_grad():
            teacher = self.source.targets(batch) if self.source is not None and len(batch) else None
        return self.part.step(self, batch, teacher)


class ClassifierPart:
    """Classifiers: logits (and hooked features) out of both models, CE over the labelled
    samples, samples as the unit of every mean."""

    selection = Selection("acc")

    def bind(self, distiller: Distiller) -> LiveTeacher | None:
        """Hooks on the layers the terms declare; the live teacher (the default source)."""
        declared = distiller.declared.values()
        self.layers = {"student": [p for d in declared for p in d.student_layers],
                       "teacher": [p for d in declared for p in d.teacher_layers]}
        self.student_capture = FeatureCapture(distiller.student, self.layers["student"], "student")
        teacher = distiller.teacher
        return LiveTeacher(teacher, self.layers["teacher"]) if teacher is not None else None

    def remove_hooks(self, distiller: Distiller) -> None:
        self.student_capture.remove()
        if distiller.live is not None:
            distiller.live.capture.remove()

    def student_outputs(self, student: nn.Module, inputs: torch.Tensor) -> Outputs:
        logits, features = self.student_capture.run(student, inputs)
        return Outputs(logits_of(logits, "student"), features)

    def step(self, distiller: Distiller, batch: Batch, teacher: Outputs | None) -> StepOutput:
        if len(batch) == 0:  # a process's share of a last batch smaller than the process count
            return empty_step(distiller)
        labels = batch.targets
        if labels is None:
            raise DistillError("A classifier's Batch needs targets (class labels, -1 = unlabelled): "
                               "Batch(inputs, targets, index).")
        student = self.student_outputs(distiller.student, batch.inputs)
        ce = ce_loss(student.logits, labels)
        terms, total = {"ce": ce}, distiller.ce_weight * ce
        for name, term in distiller.terms.items():
            terms[name] = term(student, teacher, batch)
            total = total + distiller.weights[name] * terms[name]
        labelled = labels != UNLABELLED  # no boolean indexing: it would sync the GPU each step
        correct = ((student.logits.argmax(-1) == labels) & labelled).sum().float()
        return StepOutput(total, terms, labelled.sum().float(), correct, student.logits)

    @staticmethod
    def count(batch: Batch) -> torch.Tensor:
        # made on the batch's device (a fill kernel), not copied there from the host
        return torch.full((), float(len(batch)), device=batch.inputs.device)

    @staticmethod
    def prepare(distiller: Distiller, batch: Batch, epoch: int, step: int) -> Batch:
        return batch

    @staticmethod
    def evaluate(student: nn.Module, loader, device) -> dict[str, float]:
        return evaluate_classifier(student, loader, device)

    def setup(self, distiller: Distiller, batch: Batch) -> None:
        """Probe feature shapes in eval mode (BatchNorm statistics untouched); size projectors."""
        was_training = distiller.student.training
        distiller.student.eval()
        student = self.student_outputs(distiller.student, batch.inputs)
        teacher = distiller.live.outputs(batch.inputs) if distiller.live is not None else Outputs(student.logits)
        distiller.student.train(was_training)
        shapes = {"student": {k: tuple(v.shape) for k, v in student.features.items()},
                  "teacher": {k: tuple(v.shape) for k, v in teacher.features.items()}}
        for role, got in shapes.items():
            missing = [p for p in dict.fromkeys(self.layers[role]) if p not in got]
            if missing:
                raise DistillError(
                    f"The {role}'s module(s) {', '.join(repr(p) for p in missing)} did not run in "
                    f"its forward pass, so no feature was captured there. Hook a module that "
                    f"forward calls (captured: {', '.join(got) or 'none'})."
                )
        for d in distiller.declared.values():
            if d.setup is not None:
                d.setup(shapes["student"], shapes["teacher"])

    def explain_nonfinite(self, distiller: Distiller, batch: Batch, out: StepOutput, first: bool) -> str:
        """Which of the inputs, the teacher, the student or a loss term made the loss
        non-finite (run only once it is, so it costs nothing on good steps)."""
        x = batch.inputs
        if x.is_floating_point() and not torch.isfinite(x).all():
            return ("This batch's inputs contain NaN/Inf: check the data (missing values in a table, "
                    "a division by zero in normalisation); lowering the learning rate will not help.")
        if distiller.teacher is not None and distiller.terms:
            teacher = distiller.live.outputs(x).logits  # live, whatever a cache holds
            if not torch.isfinite(teacher).all():
                return ("The teacher's logits contain NaN/Inf for this batch: check the teacher "
                        "checkpoint (its weights, or a half-precision train.teacher_dtype that "
                        "overflows); lowering the learning rate will not help.")
        if out.logits is not None and not torch.isfinite(out.logits).all():
            if first:  # before any update: the student's forward itself
                return ("The student's logits are NaN/Inf before any update, on finite inputs: "
                        "check the student's forward (log of a non-positive value, 0/0, fp16 "
                        "overflow) and its initial weights.")
            return ("The student's logits became NaN/Inf: training diverged. Lower train.lr, or "
                    "set train.grad_clip (e.g. 1.0).")
        return ("The inputs and both models' logits are finite, so the loss term itself "
                "overflowed: lower train.lr, set train.grad_clip (e.g. 1.0), or check the term's "
                "settings (T, layers).")


def empty_step(distiller: Distiller, names: list[str] | None = None) -> StepOutput:
    """The step of an empty batch (a process's share of a last batch smaller than the process
    count): zero loss that still reaches every trainable parameter (DDP's backward needs all of
    them), and the terms a non-empty batch reports (default: ce and every term)."""
    zero = sum(p.sum() for p in distiller.parameters() if p.requires_grad) * 0.0
    names = ["ce", *distiller.terms] if names is None else names
    return StepOutput(zero, {name: zero.detach() for name in names}, zero.detach(), zero.detach())
