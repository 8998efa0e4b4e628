"""The Distiller's part for causal language models (`TokenPart`), token by token.

    loss = ( ce_weight * sum_t CE_t + sum_k weight_k * sum_t D_k(q_t, p_t) ) / N

over the N counted target tokens t (not padding, not masked prompt tokens), with q_t the
student's and p_t the teacher's next-token distribution. Hidden-state terms (`lm_hidden`) add
weight_h * sum_t H_h(t) / N over the same rows (distill.lm.features). Batches hold the ids as
`inputs` and the target mask as `mask`, packed rows their position ids as `positions` (see
distill.lm.data). The loss is a mean over this batch's counted tokens,
and `count(batch)` tells the engine how many there are, so under gradient accumulation it
re-weights each micro-batch by its share of the whole batch's tokens: the update is the same
whatever `train.accumulate` is (a mean of per-micro-batch means would over-weight tokens in
short micro-batches).

The frozen-teacher plumbing is the one Distiller's (distill.distiller). With an offline top-k
store attached as its source (distill.lm.offline), the teacher is not needed at all during
training.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from ..contracts import Batch, Selection, StepOutput
from ..distiller import Distiller, empty_step
from ..errors import DistillError
from ..runtime import all_reduce_sum
from .chunked import Head, TeacherRows, token_loss, token_sums
from .features import HiddenTerms
from .models import hidden_states, vocab_rows


def check_vocab(teacher: nn.Module, student: nn.Module, shared_vocab: int | None) -> None:
    """Teacher and student must produce logits over the same tokens, or declare the slice they
    share (e.g. 32000 real tokens of a 32064-row padded head)."""
    t, s = vocab_rows(teacher), vocab_rows(student)
    if shared_vocab is None and t != s:
        raise DistillError(
            f"The teacher's vocabulary has {t} tokens and the student's {s}: token distributions "
            "cannot be compared. Use models with one tokenizer, or, if one vocabulary is the "
            f"other's first tokens plus padding, declare the shared slice: lm.shared_vocab={min(t, s)}; "
            "for a teacher with its own tokenizer, declare it (data.teacher_tokenizer) and distill "
            "with a cross-tokenizer term (loss.uld)."
        )
    if shared_vocab is not None and not 0 < shared_vocab <= min(t, s):
        raise DistillError(f"lm.shared_vocab={shared_vocab} must be between 1 and the smaller "
                           f"vocabulary ({min(t, s)}: teacher {t}, student {s}).")


class LiveTokenTeacher:
    """The teacher LM's final hidden states at the batch's counted positions (a
    `contracts.TeacherSource`); the chunked loss applies its head chunk by chunk."""

    def __init__(self, teacher: nn.Module):
        self.teacher = teacher

    @torch.no_grad()
    def targets(self, batch: Batch) -> TeacherRows:
        target = batch.mask[:, 1:].bool()
        hidden = hidden_states(self.teacher, batch.inputs, batch.positions)[:, :-1][target]
        return TeacherRows(hidden=hidden, head=Head.of(self.teacher))

    def set_epoch(self, epoch: int) -> None:
        """Nothing depends on the epoch here."""

    def reference(self) -> None:
        return None


class TokenPart:
    """Causal LMs in the Distiller (a `contracts.StepPart`): hidden states out of both models,
    the loss chunked over counted target tokens, tokens as the unit of every mean.

    Args:
        shared_vocab: compare only the first `shared_vocab` logits of both models.
        chunk: counted tokens per chunk of the loss (None: sized from the vocabulary).
        on_policy: an OnPolicy sampler (distill.lm.on_policy): some batches are the student's
            own samples (GKD).
        source: teacher -> TeacherSource, for a teacher that reads other rows than the
            student's (its own tokenizer: distill.lm.cross_tokenizer); None: the batch's ids.
    """

    selection = Selection("ppl", lower_is_better=True)

    def __init__(self, shared_vocab: int | None = None, chunk: int | None = None, on_policy=None,
                 source=None):
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise DistillError(f"chunk must be a whole number of tokens >= 1, or None (sized from the "
                               f"vocabulary); got {chunk!r}.")
        self.shared_vocab, self.chunk, self.on_policy, self.source = shared_vocab, chunk, on_policy, source

    def bind(self, distiller):
        self.hidden = HiddenTerms(distiller)  # hidden-state terms: layer maps and hooks
        if distiller.teacher is None:
            return None
        if self.source is not None:  # the teacher's own vocabulary: no token ids are shared
            return self.source(distiller.teacher)
        check_vocab(distiller.teacher, distiller.student, self.shared_vocab)
        return self.hidden.source(LiveTokenTeacher(distiller.teacher), distiller.teacher)

    def prepare(self, distiller, batch: Batch, epoch: int, step: int) -> Batch:
        """Swap in a batch generated by the student on the steps the sampler picks (only with
        teacher terms); other batches pass through. A process's empty share of a picked step
        stays empty but is flagged on-policy, so that it reports the same terms as the
        processes that sampled."""
        if self.on_policy is None or not distiller.terms or not self.on_policy.chosen(epoch, step):
            return batch
        if len(batch):
            return self.on_policy.make_batch(distiller.student, batch)
        return replace(batch, index=None, on_policy=True)

    @staticmethod
    def count(batch: Batch) -> torch.Tensor:
        """Counted target tokens of a batch (the loss is a mean over these)."""
        return batch.mask[:, 1:].sum()

    def step(self, distiller, batch: Batch, teacher: TeacherRows | None) -> StepOutput:
        """Means over counted tokens of the loss and each term. On-policy batches train without
        CE (its labels would be the student's own samples) and report no "ce": the engine
        averages each term over the steps that report it, so the logged train_ce is the mean
        over the data batches, the CE that trains."""
        if batch.mask is None:
            raise DistillError("A language model's Batch needs the target mask: Batch(ids, mask=mask, "
                               "index=index) (a tuple (ids, mask) would read the mask as class labels).")
        if len(batch) == 0:  # a process's share of a last batch smaller than the process count
            # the same terms as a non-empty batch of the same kind (no "ce" on an on-policy step)
            return empty_step(distiller, [*([] if batch.on_policy else ["ce"]), *distiller.terms])
        ids = batch.inputs
        target = batch.mask[:, 1:].bool()
        n = target.sum()
        with self.hidden.student(distiller.student) as features:
            hidden = hidden_states(distiller.student, ids, batch.positions)[:, :-1][target]
        # on-policy targets are the student's own samples: only the teacher's terms train
        weights = {"ce": 0.0 if batch.on_policy else distiller.ce_weight, **distiller.weights}
        loss, sums = token_loss(hidden, Head.of(distiller.student), ids[:, 1:][target], count=n,
                                terms=self.token_terms(distiller), weights=weights, teacher=teacher,
                                vocab=self.shared_vocab, chunk=self.chunk)
        loss = self.hidden.add(distiller, loss, sums, features, teacher, target, n)
        skip = {"correct", "ce"} if batch.on_policy else {"correct"}
        terms = {k: v / n.clamp(min=1) for k, v in sums.items() if k not in skip}
        return StepOutput(loss, terms, n.float(), sums["correct"])

    def evaluate(self, student: nn.Module, loader, device) -> dict[str, float]:
        """Mean next-token NLL over counted tokens, perplexity exp(NLL), next-token accuracy %."""
        return evaluate_lm(student, loader, device, self.chunk)

    def token_terms(self, distiller) -> dict:
        """The terms of the chunked loss: all but the hidden-state ones."""
        return {k: v for k, v in distiller.terms.items() if k not in self.hidden.terms}

    def setup(self, distiller, batch: Batch) -> None:
        """Size the hidden-state terms' projectors (token terms have none)."""
        self.hidden.setup(distiller, batch)

    @staticmethod
    def explain_nonfinite(distiller, batch: Batch, out: StepOutput, first: bool) -> str:
        return ("Token ids are integers, so the student, the teacher or a term overflowed: lower "
                "train.lr, set train.grad_clip (e.g. 1.0), or check train.precision and "
                "train.teacher_dtype.")


def lm_distiller(teacher, student, terms: dict | None = None, ce_weight: float = 1.0,
                 shared_vocab: int | None = None, chunk: int | None = None, on_policy=None,
                 source=None) -> Distiller:
    """A Distiller for causal LMs: `Distiller(..., part=TokenPart(...))`."""
    return Distiller(teacher, student, terms, ce_weight, part=TokenPart(shared_vocab, chunk, on_policy, source))


@torch.no_grad()
def evaluate_lm(model: nn.Module, loader, device, chunk: int | None = None) -> dict[str, float]:
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # nll, correct, tokens
    head = Head.of(model)
    for item in loader:
        batch = item.to(device)
        ids, mask = batch.inputs, batch.mask
        if len(ids) == 0:  # this process's share of a small last batch
            continue
        target = mask[:, 1:].bool()
        sums = token_sums(hidden_states(model, ids, batch.positions)[:, :-1][target], head, ids[:, 1:][target], chunk)
        if sums:
            totals += torch.stack([sums["ce"].double(), sums["correct"].double(), target.sum().double()])
    model.train(was_training)
    nll, correct, tokens = all_reduce_sum(totals).tolist()
    loss = nll / max(tokens, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 700)), "acc": 100.0 * correct / max(tokens, 1),
            "tokens": int(tokens)}
