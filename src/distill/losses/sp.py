"""Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019 (arXiv:1907.09682).

    Q   = f flattened per sample                   (B x D; D may differ between the two nets)
    G   = row_l2_normalize(Q Q^T)                  (B x B pairwise similarities in the batch)
    SP  = (1 / B^2) * || G_s - G_t ||_F^2

The student learns to make the same samples (dis)similar to each other as the teacher does, so
only the batch sizes must agree: channels and spatial sizes may differ, nothing is trainable.

Paper default: gamma = 3000 (CIFAR-10), the weight RepDistiller and mdistiller also use. The
paper sums the term over several layer pairs; here one term is one pair (add several terms to
use several). The paper and the reference code agree on the formula.

The term is a property of the whole batch, not an average of per-sample values: repeating the
batch twice halves it (each row's norm grows by sqrt(2) while the entry count grows by 4 and
the divisor by 4), so its scale depends on the batch composition, as in the paper.

Labels are not used; unlabelled rows (y == -1) count like any other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import LayerPair, check_same_batch


def similarity_matrix(f: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B, B): Gram matrix of the flattened samples, each row L2-normalized."""
    q = f.float().reshape(f.size(0), -1)
    return F.normalize(q @ q.t(), dim=1)


def sp_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving term: squared Frobenius distance of the normalized Gram matrices
    over B^2. The teacher feature is a fixed target: no gradient flows into it."""
    check_same_batch(f_s, f_t)
    b = f_s.size(0)
    diff = similarity_matrix(f_s) - similarity_matrix(f_t.detach())
    return diff.pow(2).sum() / (b * b)


class SP(LayerPair):
    """Similarity-preserving term between one student layer and one teacher layer."""

    cite = "Tung & Mori 2019, Similarity-Preserving Knowledge Distillation (ICCV)"

    def forward(self, student, teacher, batch) -> torch.Tensor:
        return sp_loss(student.features[self.student], teacher.features[self.teacher])
