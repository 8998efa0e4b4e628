"""Deep mutual learning (Zhang et al. 2018, "Deep Mutual Learning", arXiv:1706.00384): a cohort
of K students, none pretrained, each trained on the labels and towards the others' predictions.

    L_k = ce_weight * CE(z_k, y) + sum_terms weight * 1/(K-1) * sum_{l != k} term(z_k, stopgrad(z_l))
    total = sum_k L_k

With the kd term at T = 1 that is the paper's loss, L_k = CE + 1/(K-1) sum_l KL(p_l || p_k).
The others' logits are detached, so the gradient of the total with respect to student k's
weights is the gradient of L_k alone: one backward and one optimizer step update the whole
cohort at once (the paper alternates updates, each student seeing the others' newest
predictions; here they all see the predictions of the same step, as the issue asks).

`Cohort` is a `contracts.Distiller`, so the engine trains it like any other: its `student` is
the first member (the run's distill stage, the student section's model), and its evaluation
is that student's, with every peer's metrics beside it as peer-<i>_<metric>; the best epoch
is chosen on the student's validation metric and the whole cohort is kept at that epoch.
"""

from __future__ import annotations

import torch
from torch import nn

from .contracts import UNLABELLED, Batch, Outputs, Selection, StepOutput, as_batch
from .distiller import ce_loss, empty_step
from .errors import DistillError
from .metrics import evaluate_classifier
from .models.outputs import logits_of
from .terms import declared


def logit_terms_only(terms: dict, key: str) -> None:
    """Refuse feature terms where the models they would compare change from stage to stage
    (mutual.peers: the cohort's students; assistants: each link's pair of models)."""
    for name, (term, _) in terms.items():
        d = declared(term)
        if d.student_layers or d.teacher_layers or d.setup is not None:
            raise DistillError(f"loss.{name} reads model layers, and with {key} the terms compare "
                               f"logits only (the models change from link to link). Use logit terms "
                               f"(kd, dkd, ...) with {key}, or remove loss.{name}.")


class Cohort(nn.Module):
    """Students trained together: `students[0]` is the run's student, the rest its peers
    (named `names`); `terms` {name: (module, weight)} are copied once per student."""

    def __init__(self, students: list[nn.Module], terms: list[dict], ce_weight: float, names: list[str]):
        super().__init__()
        if len(students) < 2 or len(terms) != len(students):
            raise ValueError("a cohort needs two or more students and one set of terms per student")
        self.members = nn.ModuleList(students)
        self.terms = nn.ModuleList([nn.ModuleDict({n: m for n, (m, _) in t.items()}) for t in terms])
        self.weights = {n: float(w) for n, (_, w) in terms[0].items()}
        self.ce_weight, self.names = float(ce_weight), list(names)
        for t in terms:
            logit_terms_only(t, "mutual.peers")
        self.needs_setup = False
        self.selection = Selection("acc")

    @property
    def student(self) -> nn.Module:
        return self.members[0]

    @property
    def peers(self) -> list[nn.Module]:
        return list(self.members[1:])

    def forward(self, batch: Batch) -> StepOutput:
        batch = as_batch(batch, "the batch")
        if len(batch) == 0:
            return empty_step(self, ["ce", *self.weights])
        labels = batch.targets
        logits = [logits_of(m(batch.inputs), "student") for m in self.members]
        others = len(logits) - 1
        total, logged = 0.0, {"ce": 0.0, **dict.fromkeys(self.weights, 0.0)}
        for k, z in enumerate(logits):
            ce = ce_loss(z, labels)
            loss, logged["ce"] = self.ce_weight * ce, logged["ce"] + ce / len(logits)
            for name, term in self.terms[k].items():
                value = sum(term(Outputs(z), Outputs(o.detach()), batch) for j, o in enumerate(logits) if j != k) / others
                loss = loss + self.weights[name] * value
                logged[name] = logged[name] + value / len(logits)
            total = total + loss
        labelled = labels != UNLABELLED
        correct = ((logits[0].argmax(-1) == labels) & labelled).sum().float()
        return StepOutput(total, logged, labelled.sum().float(), correct, logits[0])

    def setup(self, batch: Batch) -> None:
        """Nothing to size: mutual learning's terms compare logits only."""

    def set_epoch(self, epoch: int) -> None:
        for t in self.terms:
            for term in t.values():
                d = declared(term)
                if d.set_epoch is not None:
                    d.set_epoch(epoch)

    def prepare(self, batch: Batch, epoch: int, step: int) -> Batch:
        return batch

    @staticmethod
    def count(batch: Batch) -> torch.Tensor:
        return torch.full((), float(len(batch)), device=batch.inputs.device)

    def evaluate(self, loader, device) -> dict[str, float]:
        """The student's metrics, and each peer's as <peer>_<metric>."""
        out = evaluate_classifier(self.student, loader, device)
        for name, peer in zip(self.names, self.peers, strict=True):
            out.update({f"{name}_{k}": v for k, v in evaluate_classifier(peer, loader, device).items()})
        return out

    def explain_nonfinite(self, batch: Batch, out: StepOutput, first: bool) -> str:
        x = batch.inputs
        if x.is_floating_point() and not torch.isfinite(x).all():
            return "This batch's inputs contain NaN/Inf: check the data; lowering the learning rate will not help."
        return ("A student's loss became NaN/Inf: training diverged. Lower train.lr, or set "
                "train.grad_clip (e.g. 1.0).")

    def source_reference(self) -> None:
        return None  # no teacher, no cache
