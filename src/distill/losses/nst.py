"""Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer",
arXiv:1707.01219, 2017.

Each channel of a (N, C, H, W) map, flattened over its H*W positions and L2-normalized, is one
sample of that network's "neuron selectivity" distribution. NST matches the student's and the
teacher's distributions with the squared Maximum Mean Discrepancy under the polynomial kernel
k(x, y) = (x . y + c)^d with d = 2, c = 0:

    MMD^2 = mean_ij k(s_i, s_j) + mean_ij k(t_i, t_j) - 2 mean_ij k(s_i, t_j)
    NST   = MMD^2 averaged over the samples of the batch

with s_i the student's channels (C_s of them) and t_j the teacher's (C_t). The kernel acts on
spatial vectors, so the channel counts may differ; the spatial sizes must agree, and when they
do not, the larger map is adaptive-average pooled to the smaller (per dimension, to (min H,
min W)) before normalizing, as the reference implementations do. There are no trainable parts.

Paper vs. reference implementations: the paper scales the term by lambda/2 and tunes lambda per
kernel; RepDistiller and mdistiller use the formula above (their teacher-teacher part is
detached, which changes no value or gradient since it does not depend on the student) with
weight 50. We compute the same quantity and leave the weight to the config (50 matches them).

Labels are not used; unlabelled rows (y == -1) count like any other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import LayerPair, pool_to_common


def _mean_poly2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per sample, the mean over channel pairs (i, j) of (a_i . b_j)^2: (N,) from (N, C, P)."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean(dim=(1, 2))


def nst_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Squared MMD (polynomial kernel, d=2, c=0) between the student's and teacher's
    L2-normalized channel maps, averaged over the batch. The teacher feature is a fixed target:
    no gradient flows into it."""
    if f_s.dim() < 3 or f_t.dim() < 3 or f_s.size(0) != f_t.size(0):
        raise ValueError(
            f"nst_loss needs (N, C, H, W) maps with the same N; got {tuple(f_s.shape)} and "
            f"{tuple(f_t.shape)}"
        )
    f_s, f_t = pool_to_common(f_s.float(), f_t.detach().float())
    s = F.normalize(f_s.reshape(f_s.size(0), f_s.size(1), -1), dim=2)
    t = F.normalize(f_t.reshape(f_t.size(0), f_t.size(1), -1), dim=2)
    mmd2 = _mean_poly2(s, s) + _mean_poly2(t, t) - 2 * _mean_poly2(s, t)
    return mmd2.mean()


class NST(LayerPair):
    """Neuron selectivity transfer between one student layer and one teacher layer."""

    cite = (
        "Huang & Wang 2017, Like What You Like: Knowledge Distill via Neuron Selectivity Transfer"
    )

    def forward(self, student, teacher, batch) -> torch.Tensor:
        return nst_loss(student.features[self.student], teacher.features[self.teacher])
