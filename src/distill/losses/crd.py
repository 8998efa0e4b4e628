"""Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020
(arXiv:1910.10699).

CRD trains the student so that its representation of a sample can pick out the teacher's
representation of the *same* sample among the teacher's representations of other samples (and
the other way round), a lower bound on the mutual information between the two. Features are
flattened per sample and mapped by two trainable linear heads (student width -> feat_dim,
teacher width -> feat_dim), then L2-normalized to z_s, z_t. With a queue of K earlier
embeddings of each network (q_t: teacher's, q_s: student's):

    student anchor:  logits_i = [z_s_i . z_t_i, z_s_i . q_t_1, ..., z_s_i . q_t_K] / T
    teacher anchor:  logits_i = [z_t_i . z_s_i, z_t_i . q_s_1, ..., z_t_i . q_s_K] / T
    CRD = mean_i CE(student-anchor logits_i, class 0) + mean_i CE(teacher-anchor logits_i, class 0)

i.e. InfoNCE in both directions, summed as in the reference (its CRDLoss returns the student-
anchor part plus the teacher-anchor part). While the queue is still empty (the very first
step) the other samples of the batch serve as negatives: logits = z_s z_t^T / T (and z_t z_s^T
/ T) with the diagonal as the positive. Queue entries (or batch rows) that come from the
anchor's own sample, known from the batch's sample index, are left out of its negatives; once
the queue has wrapped around a small dataset it holds older embeddings of the current samples,
which would otherwise be contrasted against themselves.

Paper defaults: feat_dim = 128, temperature T = 0.07, 16384 negatives drawn from a memory bank
holding one (momentum-0.5-updated) embedding per training sample for each network; embedding
heads = linear + L2 normalization, both trained.

Where and why we differ from the paper and its reference code (RepDistiller):
  * Negatives come from a FIXED-SIZE queue (ring buffer, MoCo style) of the most recent
    queue_size embeddings of each network, not from an N x feat_dim bank over the whole
    training set: the bank's memory grows with the dataset (and it ran out of memory on large
    data), the queue's does not. Default queue_size = 4096 (2 x 4096 x 128 floats = 4 MiB), not
    16384: enough negatives for the small and medium data sets this toolkit targets; raise it
    for large data. A queue larger than the data set works (an anchor's own older entries are
    excluded by index) but holds several stale copies of each sample. Entries are the batches'
    detached embeddings, so they lag the heads by at most queue_size / batch steps (the
    bank's entries lag by up to an epoch). Only training-mode forwards enqueue.
  * The loss is the softmax cross-entropy (InfoNCE) form, not the paper's NCE binary
    classifier with its normalization constant Z (estimated once from the first batch) and
    noise prior 1/N. N (the data-set size) has no meaning for a queue, and the softmax form
    needs no Z. The NCE-vs-softmax choice is the one the authors' own CMC code exposes as
    NCECriterion vs NCESoftmaxLoss; the value scale therefore differs from the reference's
    (which is why CRD weights tuned with the reference, e.g. 0.8, may need re-tuning).
The teacher features are detached; the teacher's embedding head still trains. The queue is a
set of buffers: each process fills its own, and a DDP wrapper with its default
broadcast_buffers=True replaces them with rank 0's at every forward. All arithmetic is in
fp32, with autocast switched off inside the term (embedding heads included), so mixed
precision does not reach the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerPair, feature_shape, flat_shape, fp32_region


def _check_T(T) -> None:
    if not T > 0:
        raise ValueError(f"T must be > 0 (got {T}); the paper uses 0.07")


def crd_loss(
    z_s: torch.Tensor,
    z_t: torch.Tensor,
    queue_t: torch.Tensor,
    queue_s: torch.Tensor,
    T: float = 0.07,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Two-way InfoNCE with queue negatives (in-batch negatives when the queues are empty).

    z_s, z_t: (B, d) embeddings (L2-normalized here). queue_t, queue_s: (K, d) earlier teacher /
    student embeddings; K = 0 selects in-batch negatives. exclude: optional bool mask, True
    for negatives to leave out: (B, K), or (B, B) in in-batch mode (its diagonal, the
    positive, is never excluded). Returns mean CE(student anchor) + mean CE(teacher anchor).
    Nothing is detached: the teacher's embedding head is trained through z_t.
    """
    _check_T(T)
    if z_s.shape != z_t.shape or z_s.dim() != 2:
        raise ValueError(
            f"z_s {tuple(z_s.shape)} and z_t {tuple(z_t.shape)} must both be (B, d) of one shape"
        )
    if queue_t.shape != queue_s.shape or queue_t.dim() != 2:
        raise ValueError(
            f"queue_t {tuple(queue_t.shape)} and queue_s {tuple(queue_s.shape)} must both be "
            "(K, d) of one shape"
        )
    with fp32_region(z_s):
        return _two_way_infonce(z_s, z_t, queue_t, queue_s, T, exclude)


def _two_way_infonce(z_s, z_t, queue_t, queue_s, T, exclude) -> torch.Tensor:
    z_s = F.normalize(z_s.float(), dim=1)
    z_t = F.normalize(z_t.float(), dim=1)
    batch = z_s.shape[0]
    if queue_t.shape[0] == 0:
        logits_s = z_s @ z_t.t() / T
        logits_t = z_t @ z_s.t() / T
        target = torch.arange(batch, device=z_s.device)
        if exclude is not None:
            eye = torch.eye(batch, dtype=torch.bool, device=z_s.device)
            drop = exclude.to(torch.bool) & ~eye
            logits_s = logits_s.masked_fill(drop, float("-inf"))
            logits_t = logits_t.masked_fill(drop, float("-inf"))
    else:
        q_t = F.normalize(queue_t.float(), dim=1)
        q_s = F.normalize(queue_s.float(), dim=1)
        pos = (z_s * z_t).sum(dim=1, keepdim=True)
        neg_s = z_s @ q_t.t()
        neg_t = z_t @ q_s.t()
        if exclude is not None:
            drop = exclude.to(torch.bool)
            neg_s = neg_s.masked_fill(drop, float("-inf"))
            neg_t = neg_t.masked_fill(drop, float("-inf"))
        logits_s = torch.cat([pos, neg_s], dim=1) / T
        logits_t = torch.cat([pos, neg_t], dim=1) / T
        target = torch.zeros(batch, dtype=torch.long, device=z_s.device)
    return F.cross_entropy(logits_s, target) + F.cross_entropy(logits_t, target)


class CRD(LayerPair):
    """Contrastive representation distillation with a fixed-size negative queue."""

    cite = "Tian, Krishnan & Isola 2020, Contrastive Representation Distillation (ICLR)"

    def __init__(
        self,
        student: str,
        teacher: str,
        feat_dim: int = 128,
        queue_size: int = 4096,
        T: float = 0.07,
    ):
        super().__init__(student, teacher)
        for name, value, paper in (("feat_dim", feat_dim, 128), ("queue_size", queue_size, 16384)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1 (got {value!r}); paper: {paper}")
        _check_T(T)
        self.feat_dim = feat_dim
        self.queue_size = queue_size
        self.T = float(T)
        self.embed_s: nn.Module | None = None
        self.embed_t: nn.Module | None = None
        self.register_buffer("queue_s", torch.zeros(queue_size, feat_dim))
        self.register_buffer("queue_t", torch.zeros(queue_size, feat_dim))
        self.register_buffer("queue_index", torch.full((queue_size,), -1, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_len", torch.zeros((), dtype=torch.long))
        # queue_len mirrored on the host, so a step does not read it from the device (a sync
        # on GPU); re-read once after a state dict (a resumed run's queue) is loaded
        self._filled: int | None = 0
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_filled", None))

    def setup(self, student_shapes: dict, teacher_shapes: dict) -> None:
        s = feature_shape(student_shapes, self.student, "student")
        t = feature_shape(teacher_shapes, self.teacher, "teacher")
        self.embed_s = nn.Linear(flat_shape(s)[1], self.feat_dim)
        self.embed_t = nn.Linear(flat_shape(t)[1], self.feat_dim)

    def forward(self, student, teacher, batch) -> torch.Tensor:
        if self.embed_s is None:
            raise RuntimeError("CRD.setup() was not called: the embedding heads are sized there")
        f_s = student.features[self.student]
        f_t = teacher.features[self.teacher].detach()
        with fp32_region(f_s):
            z_s = F.normalize(self.embed_s(f_s.reshape(f_s.shape[0], -1).float()), dim=1)
            z_t = F.normalize(self.embed_t(f_t.reshape(f_t.shape[0], -1).float()), dim=1)
        index = _sample_index(batch, z_s)

        if self._filled is None:
            self._filled = int(self.queue_len)
        filled = self._filled
        if filled:
            queue_t, queue_s = self.queue_t[:filled], self.queue_s[:filled]
            known = self.queue_index[:filled]
        else:  # first step: in-batch negatives
            queue_t = queue_s = z_s.new_zeros(0, self.feat_dim)
            known = index
        exclude = None
        if index is not None and known is not None:
            exclude = (index[:, None] == known[None, :]) & (index[:, None] >= 0)
        loss = crd_loss(z_s, z_t, queue_t, queue_s, self.T, exclude)

        if self.training:
            self._enqueue(z_s.detach(), z_t.detach(), index)
        return loss

    @torch.no_grad()
    def _enqueue(self, z_s: torch.Tensor, z_t: torch.Tensor, index: torch.Tensor | None) -> None:
        if index is None:
            index = torch.full((z_s.shape[0],), -1, dtype=torch.long, device=z_s.device)
        if z_s.shape[0] > self.queue_size:  # keep the newest queue_size rows
            z_s, z_t, index = (x[-self.queue_size :] for x in (z_s, z_t, index))
        n = z_s.shape[0]
        pos = (self.queue_ptr + torch.arange(n, device=self.queue_ptr.device)) % self.queue_size
        self.queue_s[pos] = z_s.to(self.queue_s.dtype)
        self.queue_t[pos] = z_t.to(self.queue_t.dtype)
        self.queue_index[pos] = index.to(self.queue_index.device)
        self.queue_ptr.copy_((self.queue_ptr + n) % self.queue_size)
        self.queue_len.copy_(torch.clamp(self.queue_len + n, max=self.queue_size))
        if self._filled is not None:
            self._filled = min(self._filled + n, self.queue_size)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, feat_dim={self.feat_dim}, "
            f"queue_size={self.queue_size}, T={self.T}"
        )


def _sample_index(batch, like: torch.Tensor) -> torch.Tensor | None:
    """The batch's per-sample data-set indices (Batch.index) as a long tensor, if it has them."""
    if batch is None or batch.index is None:
        return None
    index = torch.as_tensor(batch.index, device=like.device).reshape(-1).long()
    return index if index.shape[0] == like.shape[0] else None
