"""Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher" (DIST),
NeurIPS 2022.

Instead of matching the teacher's probabilities exactly (KL), DIST matches their *relations*
with Pearson's correlation rho, which ignores shifts and scales of the compared vectors:

    Y_s = softmax(student_logits / T),  Y_t = softmax(teacher_logits / T)      (B x C)
    inter = 1 - (1/B) sum_i rho(Y_s[i, :], Y_t[i, :])     each sample's ranking of the classes
    intra = 1 - (1/C) sum_j rho(Y_s[:, j], Y_t[:, j])     each class's ranking of the samples
    DIST  = beta * T^2 * inter + gamma * T^2 * intra

Defaults: beta = gamma = 1, T = 1 (the paper's and the reference's ImageNet setting, where the
term is weighted 2 beside CE weight 1). On CIFAR-100 the authors' release uses T = 4 with the
same weight 2 (config `dist_cifar.yaml`, method `dist_t4`).

Paper vs reference: the paper writes rho as cov / (std * std); the reference computes it as the
cosine of the mean-centred vectors with eps = 1e-8 added to the product of the norms, so that
a constant vector (zero variance) gives rho = 0 instead of 0/0. We follow the reference (same
value up to ~1e-8 relative otherwise). The temperature and its T^2 factor are in the paper's
formulas (as we read them) and in the reference code since its CIFAR-100 update (Dec 2022);
the first code release had no temperature (T = 1 fixed).

Batch size: both terms are per-sample / per-class means, and Pearson's rho is unchanged when
every sample is duplicated, so repeating the batch leaves the value unchanged. The intra term
needs at least 2 samples: with a batch of one, every class column is constant and intra is the
constant 1 (no gradient).
"""

from __future__ import annotations

import torch
from torch import nn


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of `a` with the same row of `b` (eps as the reference)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    T: float = 1.0,
) -> torch.Tensor:
    """beta * T^2 * (1 - mean row correlation) + gamma * T^2 * (1 - mean column correlation).

    The teacher's logits are a fixed target: no gradient flows into them.
    """
    y_s = (student_logits.float() / T).softmax(dim=1)
    y_t = (teacher_logits.detach().float() / T).softmax(dim=1)
    inter = 1 - _pearson_rows(y_s, y_t).mean()
    intra = 1 - _pearson_rows(y_s.t(), y_t.t()).mean()
    return T**2 * (beta * inter + gamma * intra)


class DIST(nn.Module):
    """DIST's correlation-based logit term. Weight it in the config, never here."""

    cite = "Huang et al. 2022, Knowledge Distillation from A Stronger Teacher (NeurIPS)"

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, T: float = 1.0):
        super().__init__()
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0 (got {beta}); the paper uses 1")
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0 (got {gamma}); the paper uses 1")
        if not T > 0:
            raise ValueError(f"T must be > 0 (got {T}); the paper uses 1 (ImageNet) or 4 (CIFAR)")
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.T = float(T)

    def forward(self, student, teacher, batch) -> torch.Tensor:
        return dist_loss(student.logits, teacher.logits.detach(), self.beta, self.gamma, self.T)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, gamma={self.gamma}, T={self.T}"
