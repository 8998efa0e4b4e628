"""Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022.

Classical KD is split, per sample with target class t, into two parts:

    b = (p_t, 1 - p_t)                                       binary target / non-target probs
    p~_j = p_j / (1 - p_t) for j != t                        distribution among non-targets
    TCKD = KL(b_teacher || b_student)
    NCKD = KL(p~_teacher || p~_student)
    KD   = TCKD + (1 - p_t_teacher) * NCKD                   (the paper's identity)
    DKD  = alpha * TCKD + beta * NCKD

with all probabilities softmax(logits / T); each KL is summed over its classes, averaged over
the batch ("batchmean") and multiplied by T^2 as in KD. DKD drops the (1 - p_t_teacher) factor
that suppresses NCKD exactly on the samples the teacher is sure about.

Paper defaults (CIFAR-100): alpha = 1, beta = 8, T = 4, with the DKD term ramped up linearly
over the first 20 epochs; the paper tunes beta per teacher (e.g. 2 for a few CIFAR pairs).
ImageNet (the reference's config): alpha = 1, beta = 0.5, T = 1, warm-up 1 epoch. CE weight 1.

Warm-up: the term is multiplied by min((epoch + 1) / warmup, 1), where `epoch` is given through
`set_epoch` counted from 0. The reference (mdistiller) uses min(epoch / warmup, 1) with epochs
counted from 1, so this is the same schedule: 1/20 in the first epoch, full weight from the 20th.
warmup = 0 disables the ramp. Until `set_epoch` is called the module assumes epoch 0.

Where we differ from the reference's arithmetic (not its value): it masks the target class by
subtracting 1000 from the scaled logits and takes log of the summed binary probabilities; we
drop the target column exactly and compute log(1 - p_t) as logsumexp(non-target) -
logsumexp(all), which is the same quantity without the overflow/underflow cases (a student with
p_t rounding to 1 gives log 0 = -inf in the reference).

Unlabelled samples (label -1): DKD needs a target class. For those rows we use the teacher's
argmax as the target -- the teacher's own prediction is the natural pseudo-label, and with it
TCKD/NCKD split the teacher's confident class from the rest exactly as on labelled data.
"""

from __future__ import annotations

import torch
from torch import nn

from .standardize import standardize_logits


def _kl_rows(p_t_log: torch.Tensor, p_s_log: torch.Tensor) -> torch.Tensor:
    """sum_c p_t (log p_t - log p_s) over the last dim, with 0 * log 0 taken as 0."""
    p_t = p_t_log.exp()
    terms = p_t * (p_t_log - p_s_log)
    return torch.where(p_t > 0, terms, torch.zeros_like(terms)).sum(dim=-1)


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    T: float = 4.0,
) -> torch.Tensor:
    """alpha * TCKD + beta * NCKD at temperature T, each batchmean and times T^2.

    `target` holds class indices; entries of -1 (unlabelled) are replaced by the teacher's argmax.
    The teacher's logits are a fixed target: no gradient flows into them.
    """
    teacher_logits = teacher_logits.detach()
    s = student_logits.float() / T
    t = teacher_logits.float() / T
    B, K = s.shape
    if K < 2:
        raise ValueError(f"DKD needs at least 2 classes (got {K})")
    target = target.reshape(-1).long()
    target = torch.where(target < 0, teacher_logits.argmax(dim=-1), target)
    is_target = torch.zeros_like(s, dtype=torch.bool).scatter_(1, target.unsqueeze(1), True)
    s_other = s[~is_target].view(B, K - 1)  # non-target logits, order kept
    t_other = t[~is_target].view(B, K - 1)

    def binary_log_probs(z: torch.Tensor, z_other: torch.Tensor) -> torch.Tensor:
        log_norm = torch.logsumexp(z, dim=1)
        log_p_target = z.gather(1, target.unsqueeze(1)).squeeze(1) - log_norm
        log_p_rest = torch.logsumexp(z_other, dim=1) - log_norm
        return torch.stack([log_p_target, log_p_rest], dim=1)

    tckd = _kl_rows(binary_log_probs(t, t_other), binary_log_probs(s, s_other))
    nckd = _kl_rows(t_other.log_softmax(dim=1), s_other.log_softmax(dim=1))
    scale = T**2 / B
    return alpha * tckd.sum() * scale + beta * nckd.sum() * scale


class DKD(nn.Module):
    """Decoupled KD term with its linear warm-up. Weight it in the config, never here.

    With `standardize=True` both models' logits are z-scored per sample first (Sun et al.,
    CVPR 2024, `distill.losses.standardize`); T is then a base temperature. The authors' CIFAR-100
    setting for it: T = 2 and the DKD term weighted 9 (their alpha and beta times 9), CE weight 1.
    The engine should call `set_epoch(epoch)` (from 0) at the start of every epoch.
    """

    cite = "Zhao et al. 2022, Decoupled Knowledge Distillation (CVPR)"

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        T: float = 4.0,
        warmup: int = 20,
        standardize: bool = False,
    ):
        super().__init__()
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0 (got {alpha}); the paper uses 1")
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0 (got {beta}); the paper uses 0.5 to 8")
        if not T > 0:
            raise ValueError(f"T must be > 0 (got {T}); the paper uses 4 (CIFAR) or 1 (ImageNet)")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(
                f"warmup must be a whole number of epochs >= 0 (got {warmup!r}); "
                "the paper uses 20, and 0 turns the warm-up off"
            )
        if not isinstance(standardize, bool):
            raise ValueError(f"standardize must be true or false (got {standardize!r})")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.T = float(T)
        self.warmup = warmup
        self.standardize = standardize
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Tell the term which epoch (counted from 0) is starting; drives the warm-up."""
        self.epoch = int(epoch)

    def warmup_factor(self) -> float:
        if self.warmup == 0:
            return 1.0
        return min((self.epoch + 1) / self.warmup, 1.0)

    def forward(self, student, teacher, batch) -> torch.Tensor:
        s, t = student.logits, teacher.logits.detach()
        if self.standardize:
            s, t = standardize_logits(s), standardize_logits(t)
        loss = dkd_loss(s, t, batch.targets, self.alpha, self.beta, self.T)
        return self.warmup_factor() * loss

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, T={self.T}, warmup={self.warmup}, "
            f"standardize={self.standardize}"
        )
