"""The Distiller: a frozen teacher, a student, and named, weighted loss terms.

    total = ce_weight * CE(student, labels) + sum_k weight_k * term_k(student, teacher, batch)

The teacher is held outside the module tree on purpose: it is not in `parameters()`, so it is
never handed to an optimizer, never saved with the student and never wrapped by DDP. The
student and every loss term (with any projector it owns) are submodules, so one optimizer and
one DDP wrapper cover exactly what trains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DistillError
from .hooks import FeatureCapture
from .models.outputs import logits_of

UNLABELLED = -1  # label value of transfer-set samples that have no label


@dataclass
class Outputs:
    """What a model produced for a batch: logits, plus hooked features by module path."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


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


def _check_captured(role: str, paths: list[str], shapes: dict) -> None:
    """Every hooked path gave a feature in the probe's forward pass."""
    missing = [p for p in dict.fromkeys(paths) if p not in shapes]
    if missing:
        raise DistillError(
            f"The {role}'s module(s) {', '.join(repr(p) for p in missing)} did not run in its "
            f"forward pass, so no feature was captured there. Hook a module that forward calls "
            f"(captured: {', '.join(shapes) or 'none'})."
        )


class Distiller(nn.Module):
    """Student + loss terms trained against a frozen teacher.

    Args:
        teacher: the trained teacher, or None to train the student on labels alone.
        student: the model being trained.
        terms: {name: (loss_module, weight)}; each module maps (student Outputs, teacher
            Outputs, batch) to a scalar.
        ce_weight: weight of the cross-entropy term on the labels.
    """

    select = "acc"  # validation selection: highest accuracy

    def __init__(
        self,
        teacher: nn.Module | None,
        student: nn.Module,
        terms: dict[str, tuple[nn.Module, float]] | None = None,
        ce_weight: float = 1.0,
    ):
        super().__init__()
        terms = terms or {}
        _check_args(teacher, student, terms, ce_weight)
        if terms and teacher is None:
            raise ValueError("distillation terms need a teacher")
        self.__dict__["teacher"] = teacher  # not registered: see module docstring
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        self.student = student
        self.terms = nn.ModuleDict({name: module for name, (module, _) in terms.items()})
        self.weights = {name: float(weight) for name, (_, weight) in terms.items()}
        self.ce_weight = float(ce_weight)
        # Feature methods declare the layers they read; hooks capture them on every forward.
        student_layers = [p for m in self.terms.values() for p in getattr(m, "student_layers", [])]
        teacher_layers = [p for m in self.terms.values() for p in getattr(m, "teacher_layers", [])]
        self.student_capture = FeatureCapture(student, student_layers, "student")
        self.teacher_capture = FeatureCapture(teacher, teacher_layers, "teacher") if teacher else None
        self.layers = {"student": student_layers, "teacher": teacher_layers}  # checked by setup
        self.needs_setup = any(hasattr(m, "setup") for m in self.terms.values())
        self.cache = None  # a cache.TeacherCache, set by attach_cache

    def attach_cache(self, cache) -> None:
        """Serve training batches' teacher outputs from `cache` (see `distill.cache`)."""
        if self.teacher is None:
            raise ValueError("a teacher cache needs a teacher")
        self.cache = cache

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
    def teacher_outputs(self, inputs: torch.Tensor, index: torch.Tensor | None = None) -> Outputs:
        """Teacher logits and hooked features. With a cache attached and the batch's sample
        `index` (training batches), they come from the cache (fp32, on inputs' device) and the
        teacher runs only on the misses; without an index (setup probe) it runs live."""
        if self.cache is not None and index is not None:
            return Outputs(*self.cache.lookup(inputs, index, self._run_teacher))
        return Outputs(*self._run_teacher(inputs))

    def _run_teacher(self, inputs: torch.Tensor):
        # A teacher held in bf16/fp16 to save memory takes inputs of its own dtype.
        dtype = next(self.teacher.parameters(), inputs).dtype
        if inputs.is_floating_point() and dtype != inputs.dtype:
            inputs = inputs.to(dtype)
        logits, features = self.teacher_capture.run(self.teacher, inputs)
        return logits_of(logits, "teacher"), features

    def student_outputs(self, inputs: torch.Tensor) -> Outputs:
        logits, features = self.student_capture.run(self.student, inputs)
        return Outputs(logits_of(logits, "student"), features)

    @torch.no_grad()
    def setup(self, inputs: torch.Tensor) -> None:
        """Probe feature shapes with one batch and let each term size its projector.

        Call once before building the optimizer (`fit` does it when needed). The probe runs in
        eval mode so BatchNorm statistics are untouched.
        """
        was_training = self.student.training
        self.student.eval()
        student = self.student_outputs(inputs)
        teacher = self.teacher_outputs(inputs)
        self.student.train(was_training)
        s_shapes = {k: tuple(v.shape) for k, v in student.features.items()}
        t_shapes = {k: tuple(v.shape) for k, v in teacher.features.items()}
        for role, shapes in (("student", s_shapes), ("teacher", t_shapes)):
            _check_captured(role, self.layers[role], shapes)
        for term in self.terms.values():
            if hasattr(term, "setup"):
                term.setup(s_shapes, t_shapes)
        self.to(inputs.device)
        self.needs_setup = False

    def set_epoch(self, epoch: int) -> None:
        """Tell terms with a schedule (DKD's warm-up) the current epoch, counted from 0, and
        the cache, whose view ids of this epoch's augmentation draws depend on it."""
        for term in self.terms.values():
            if hasattr(term, "set_epoch"):
                term.set_epoch(epoch)
        if self.cache is not None:
            self.cache.set_epoch(epoch)

    @staticmethod
    def count(batch) -> int:
        """Samples in a batch: every term is a mean over them, so under gradient accumulation
        the engine weights each micro-batch by its size."""
        return len(batch[0])

    def evaluate(self, loader, device) -> dict[str, float]:
        """Accuracy % and mean cross-entropy of the student on `loader`'s labelled samples."""
        from .engine import evaluate  # the engine imports this module

        return evaluate(self.student, loader, device)

    def forward(self, batch) -> dict[str, torch.Tensor]:
        """Return {"loss": total, "ce": ..., "<term>": ..., "logits": student logits,
        "correct"/"counted": labelled samples predicted right / labelled samples}.

        Term values are unweighted, so each can be logged on its own scale.

        The teacher runs before the student. The same ops on the same data either way (the
        teacher is in eval mode and draws no random numbers, so the student's dropout masks
        are the same too), but run after the student it works while the student's autograd
        graph and saved activations hold the top of the heap: glibc's allocator places the
        teacher's no-grad temporaries above them and hands those pages back to the OS when
        they are freed, so every step page-faults them in again (resnet56 -> resnet20, batch
        64, in `fit`: ~5-6k minor faults per teacher forward, none with the teacher first;
        epochs 1.05x slower, 1.09x for resnet32x4 -> resnet8x4; see the README).
        """
        inputs, labels = batch[0], batch[1]
        teacher = None
        if self.terms:
            teacher = self.teacher_outputs(inputs, batch[2] if len(batch) > 2 else None)
        student = self.student_outputs(inputs)
        out = {"ce": ce_loss(student.logits, labels)}
        total = self.ce_weight * out["ce"]
        if self.terms:
            for name, term in self.terms.items():
                out[name] = term(student, teacher, batch)
                total = total + self.weights[name] * out[name]
        out["loss"] = total
        out["logits"] = student.logits
        labelled = labels != UNLABELLED  # no boolean indexing: it would sync the GPU each step
        out["correct"] = ((student.logits.argmax(-1) == labels) & labelled).sum().float()
        out["counted"] = labelled.sum().float()
        return out
