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

import torch
import torch.nn.functional as F
from torch import nn

from .standardize import standardize_logits


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 4.0) -> torch.Tensor:
    """Soft-target KL(teacher || student) at temperature T, batchmean, times T^2."""
    student_logits = student_logits.float()
    teacher_logits = teacher_logits.detach().float()  # targets: no gradient to the teacher
    p_t = F.softmax(teacher_logits / T, dim=-1)
    log_p_s = F.log_softmax(student_logits / T, dim=-1)
    terms = p_t * (p_t.log() - log_p_s)
    terms = torch.where(p_t > 0, terms, torch.zeros_like(terms))
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
        if not T > 0:
            raise ValueError(f"T must be > 0 (got {T}); typical values are 1 to 20")
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
