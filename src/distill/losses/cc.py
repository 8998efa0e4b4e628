"""Peng, Jin, Liu, Li, Wu, Liu, Zhou & Zhang, "Correlation Congruence for Knowledge
Distillation", ICCV 2019 (arXiv:1904.01802).

CC transfers the correlation between the samples of a batch: the B x B matrix of a Gaussian
RBF kernel on the embedded features, approximated by its Taylor series. With features
flattened per sample, the student's first embedded to the teacher's width by a trainable
linear layer, and every embedding L2-normalized:

    f_i = e_i / ||e_i||_2
    k(f_i, f_j) = exp(-gamma ||f_i - f_j||^2) = exp(-2 gamma) exp(2 gamma f_i.f_j)
               ~ exp(-2 gamma) * sum_{p=0..P} (2 gamma)^p / p! * (f_i.f_j)^p      (P = order)
    C[i, j] = k(f_i, f_j)
    CC = ||C_student - C_teacher||_F^2 / B^2

Paper defaults: gamma = 0.4, P = 2 (the Taylor-expanded Gaussian RBF, the paper's best kernel).

Paper vs references. The Taylor form above equals the RBF kernel only for unit vectors
(||f_i - f_j||^2 = 2 - 2 f_i.f_j), so we L2-normalize, as the paper's derivation requires and
as several re-implementations do. torchdistill's CCKDLoss feeds raw linear outputs (no
normalization) and returns the *un-squared* Frobenius norm (torch.dist) divided by B^2;
RepDistiller's "Correlation" (code from the authors, per its comment) is a different formula
altogether (products of the absolute differences between consecutive samples). We follow the
paper's formula: the squared norm over B^2, i.e. the mean of the squared entries, which does
not change with the batch size when a batch is repeated. Embedding: torchdistill puts a
trainable linear layer on both networks; we embed only the student, to the teacher's
flattened width (no layer when the widths already match), and use the teacher's flattened
feature as is, so the target stays the teacher's own geometry.

The teacher side is detached. All arithmetic is in fp32, with autocast switched off inside
the term (the student embedding included), so mixed precision does not reach the loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerPair, check_same_batch, feature_shape, flat_shape, fp32_region
from .projector import make_projector


def _check(gamma, order) -> None:
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0 (got {gamma}); the paper uses 0.4")
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be an integer >= 1 (got {order!r}); the paper uses 2")


def _correlation(e: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    f = F.normalize(e.reshape(e.shape[0], -1).float(), p=2.0, dim=1)
    sim = f @ f.t()
    corr = torch.ones_like(sim)  # p = 0 term
    power = torch.ones_like(sim)
    for p in range(1, order + 1):
        power = power * sim
        corr = corr + ((2.0 * gamma) ** p / math.factorial(p)) * power
    return math.exp(-2.0 * gamma) * corr


def cc_loss(
    e_s: torch.Tensor, e_t: torch.Tensor, gamma: float = 0.4, order: int = 2
) -> torch.Tensor:
    """||C_s - C_t||_F^2 / B^2 with the order-`order` Taylor RBF kernel on unit embeddings.

    `e_s` (B, ...) and `e_t` (B, ...) are flattened per sample (their widths may differ);
    the teacher is detached.
    """
    _check(gamma, order)
    check_same_batch(e_s, e_t)
    with fp32_region(e_s):
        c_s = _correlation(e_s, gamma, order)
        c_t = _correlation(e_t.detach(), gamma, order)
        return ((c_s - c_t) ** 2).mean()


class CC(LayerPair):
    """Correlation congruence between one student and one teacher layer."""

    cite = "Peng et al. 2019, Correlation Congruence for Knowledge Distillation (ICCV)"

    def __init__(self, student: str, teacher: str, gamma: float = 0.4, order: int = 2):
        super().__init__(student, teacher)
        _check(gamma, order)
        self.gamma = float(gamma)
        self.order = int(order)
        self.embed: nn.Module | None = None

    def setup(self, student_shapes: dict, teacher_shapes: dict) -> None:
        flat_s = flat_shape(feature_shape(student_shapes, self.student, "student"))
        flat_t = flat_shape(feature_shape(teacher_shapes, self.teacher, "teacher"))
        self.embed = make_projector(flat_s, flat_t)

    def forward(self, student, teacher, batch) -> torch.Tensor:
        if self.embed is None:
            raise RuntimeError("CC.setup() was not called: the student embedding is sized there")
        f_s = student.features[self.student]
        with fp32_region(f_s):
            e_s = self.embed(f_s.reshape(f_s.shape[0], -1).float())
            return cc_loss(e_s, teacher.features[self.teacher].detach(), self.gamma, self.order)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gamma={self.gamma}, order={self.order}"
