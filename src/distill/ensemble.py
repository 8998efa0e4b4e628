"""Several teachers as one (`teachers: [...]`): their ensemble, and KD terms once per teacher.

`ensemble.targets: average` (the default): the KD target is the weighted mean of the teachers'
probabilities at temperature T,

    p_bar = sum_i w_i softmax(z_i / T),   w_i = weight_i / sum_j weight_j,

which `Ensemble` hands out as logits T * log(p_bar): softmax(logits / T) is then p_bar exactly
(p_bar sums to 1), so every logit term at that T (KD, and DKD's class split) reads the mixture
unchanged. The ensemble is also the run's `teacher` stage: evaluated, reported and saved as
teacher.safetensors (the members' weights under their names, plus the mixing weights and T as
buffers, so a teacher cache made at another T or with other weights is never reused).

`ensemble.targets: per_teacher`: each logit term (a term that reads no teacher layer) is
instead applied once per teacher, to that teacher's own logits, with weight
weight_term * w_i (`per_teacher_terms`). A member's logits are read by hooking the member
module itself, so the teacher cache keeps an entry per teacher.

Feature terms name the teacher they read by its name: a member's module paths are
`<name>.<path>` inside the ensemble (e.g. `teacher: cnn.blocks.1`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .contracts import Batch, Outputs
from .models.outputs import logits_of
from .terms import declared


class Ensemble(nn.Module):
    """The teachers `members` ({name: model}) with mixing `weights` ({name: weight}) at `T`."""

    def __init__(self, members: dict[str, nn.Module], weights: dict[str, float], T: float):
        super().__init__()
        for name, model in members.items():
            self.add_module(name, model)
        self._names = tuple(members)
        w = torch.tensor([float(weights[n]) for n in self._names], dtype=torch.float64)
        self.register_buffer("_weights", (w / w.sum()).float())
        self.register_buffer("_T", torch.tensor(float(T)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = self._T
        log_p = torch.stack([F.log_softmax(logits_of(self.get_submodule(n)(x), n).float() / T, dim=-1)
                             for n in self._names])
        return T * torch.logsumexp(log_p + self._weights.log()[:, None, None], dim=0)

    def extra_repr(self) -> str:
        shares = ", ".join(f"{n}={w:.3g}" for n, w in zip(self._names, self._weights.tolist(), strict=True))
        return f"average of probabilities at T={self._T.item():g}: {shares}"


class MemberTerm(nn.Module):
    """A logit term applied to one teacher of an ensemble: it hooks the member module (whose
    output is that teacher's logits) and hands the term those logits as the teacher's."""

    def __init__(self, term: nn.Module, member: str):
        super().__init__()
        self.term, self.member = term, member
        self.student_layers = list(declared(term).student_layers)
        self.teacher_layers = [member]

    def forward(self, student: Outputs, teacher: Outputs, batch: Batch) -> torch.Tensor:
        return self.term(student, Outputs(teacher.features[self.member]), batch)

    def setup(self, student_shapes: dict, teacher_shapes: dict) -> None:
        inner = declared(self.term).setup
        if inner is not None:
            inner(student_shapes, {})

    def set_epoch(self, epoch: int) -> None:
        inner = declared(self.term).set_epoch
        if inner is not None:
            inner(epoch)

    def extra_repr(self) -> str:
        return f"teacher={self.member!r}"


def per_teacher_terms(terms: dict, weights: dict[str, float]) -> dict:
    """`terms` ({name: (module, weight)}) with every logit term replaced by one copy per
    teacher, <name>_<teacher>, weighted weight * w_i; feature terms (which name their teacher's
    layers) are kept as they are."""
    total = sum(weights.values())
    out = {}
    for name, (term, weight) in terms.items():
        if declared(term).teacher_layers:
            out[name] = (term, weight)
            continue
        for member, w in weights.items():
            out[f"{name}_{member}"] = (MemberTerm(copy.deepcopy(term), member), weight * w / total)
    return out
