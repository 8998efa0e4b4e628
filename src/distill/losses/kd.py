"""Hinton et al. 2015, "Distilling the Knowledge in a Neural Network" (arXiv:1503.02531).

    KD = T^2 * (1/B) * sum_i sum_c p_t[i,c] * (log p_t[i,c] - log p_s[i,c])
    p_t = softmax(teacher_logits / T),   log p_s = log_softmax(student_logits / T)

i.e. KL(p_t || p_s) averaged per sample ("batchmean"), times T^2 because softening by T
shrinks the soft-target gradients by 1/T^2 (paper, section 2). Paper defaults: T in 2..20
(T = 20 for MNIST; T = 4 is the common CIFAR choice).

The sum is written exactly as the PyTorch tutorial writes it, so that on finite values it is
the same computation bit for bit, with one fix: a teacher probability that underflows to 0
contributes 0 (the limit of p log p), where `p * (log p - ...)` would give 0 * -inf = NaN.
The sum is taken in fp32 whatever the input precision.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DistillError
from .standardize import standardize_logits


def _positive(T) -> bool:
    """T is a finite number > 0 (a Python or NumPy number, or a one-element tensor)."""
    try:
        T = float(T)
    except (TypeError, ValueError, RuntimeError):
        return False
    return math.isfinite(T) and T > 0


def check_pair(student_logits, teacher_logits, T) -> None:
    """kd_loss's arguments: two float logit tensors of one shape and a temperature T > 0
    (a cheap check on shapes and Python numbers: no device synchronisation)."""
    if not _positive(T):
        raise DistillError(f"kd_loss: T must be > 0 and finite (got {T!r}); typical values are 1 "
                           "to 20 (4 is the common CIFAR choice).")
    for role, t in (("student", student_logits), ("teacher", teacher_logits)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise DistillError(f"kd_loss: the {role} logits must be a floating-point tensor (got "
                               f"{got}); pass the model's output, not a class index.")
    if student_logits.shape != teacher_logits.shape:
        raise DistillError(
            f"kd_loss: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape; the two models must output the same "
            "number of classes for the same batch (build the student with the teacher's "
            "num_classes)."
        )


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 4.0) -> torch.Tensor:
    """Soft-target KL(teacher || student) at temperature T, batchmean, times T^2."""
    check_pair(student_logits, teacher_logits, T)
    student_logits = student_logits.float()
    teacher_logits = teacher_logits.detach().float()  # targets: no gradient to the teacher
    p_t = F.softmax(teacher_logits / T, dim=-1)
    log_p_s = F.log_softmax(student_logits / T, dim=-1)
    terms = p_t * (p_t.log() - log_p_s)
    terms = torch.where(p_t > 0, terms, 0.0)
    return torch.sum(terms) / log_p_s.size(0) * (T**2)


class KD(nn.Module):
    """Hinton's soft-target term. Weight it in the config, never here.

    With `standardize=True` both models' logits are z-scored per sample before the loss
    (Sun et al., CVPR 2024; see `distill.losses.standardize`), and T acts as a *base*
    temperature. The authors' CIFAR-100 setting for it: T = 2, KD weight 9, CE weight 0.1.
    """

    cite = "Hinton, Vinyals & Dean 2015, Distilling the Knowledge in a Neural Network"

    def __init__(self, T: float = 4.0, standardize: bool = False):
        super().__init__()
        if not _positive(T):
            raise ValueError(f"T must be > 0 and finite (got {T!r}); typical values are 1 to 20")
        if not isinstance(standardize, bool):
            raise ValueError(f"standardize must be true or false (got {standardize!r})")
        self.T = float(T)
        self.standardize = standardize

    def forward(self, student, teacher, batch) -> torch.Tensor:
        s, t = student.logits, teacher.logits
        if self.standardize:
            s, t = standardize_logits(s), standardize_logits(t)
        return kd_loss(s, t, self.T)

    def extra_repr(self) -> str:
        return f"T={self.T}, standardize=True" if self.standardize else f"T={self.T}"
