"""Ahn, Hu, Damianou, Lawrence & Dai, "Variational Information Distillation for Knowledge
Transfer", CVPR 2019 (arXiv:1904.05835).

VID maximizes a variational lower bound on the mutual information between a teacher feature t
and a student feature s, by fitting a Gaussian q(t | s) with a learned mean and a learned
per-channel variance and minimizing its negative log-likelihood:

    mu    = mu_net(s)        1x1 conv -> ReLU -> 1x1 conv -> ReLU -> 1x1 conv (student C_s ->
                             teacher C_t channels; hidden width C_t)
    var_c = softplus(alpha_c) + eps                      (one learned alpha per teacher channel)
    VID   = mean over all elements (b, c, h, w) of 0.5 * ((t - mu)^2 / var_c + log var_c)

The constant 0.5 * log(2 pi) is dropped, so the value is not a likelihood and its minimum is
not 0: for a perfect mean (mu = t) it is 0.5 * mean_c log(var_c), negative once var_c < 1; for
residuals r it is minimized over the variance at var_c = mean(r^2) on channel c, giving
0.5 * (1 + log mean(r^2)). It may therefore go negative during training; that is expected.

Paper defaults: the heteroscedastic per-channel variance, the three-layer 1x1-conv mean
network; the authors' code initializes the variance to 5 (init_var = 5.0, alpha_c =
log(exp(init_var - eps) - 1), so softplus(alpha_c) + eps = init_var exactly) with eps = 1e-5.
Those are this term's defaults.

Paper vs reference. The paper writes the loss as a sum over channels and positions; the
authors' code (via RepDistiller) averages over all elements. We follow the code: the mean keeps
the scale independent of batch and map size (the published weights assume it). Also as in the
code: the convolutions have no bias, the hidden width is the teacher's channel count, and when
the spatial sizes differ the larger map is average-pooled down to the smaller one (the student
before mu_net, or the teacher). Vector features (N, D) are treated as (N, D, 1, 1) maps, so the
mean network is then an MLP. The teacher side is detached. All arithmetic is in fp32, with
autocast switched off inside the term (mean network included), so mixed precision does not
reach the loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerPair, feature_shape, fp32_region, pool_to_common


def vid_loss(
    mean: torch.Tensor,
    log_var_param: torch.Tensor,
    teacher_feature: torch.Tensor,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Mean over elements of 0.5 * ((t - mean)^2 / var + log var), var = softplus(alpha) + eps.

    `mean` and `teacher_feature` are (B, C, ...) of the same shape; `log_var_param` holds the
    C pre-softplus variance parameters alpha_c (one per channel, dim 1). The teacher is
    detached.
    """
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0 (got {eps}); the authors use 1e-5")
    if mean.shape != teacher_feature.shape:
        raise ValueError(
            f"mean {tuple(mean.shape)} and teacher feature {tuple(teacher_feature.shape)} "
            "must have the same shape"
        )
    channels = mean.shape[1]
    if log_var_param.numel() != channels:
        raise ValueError(
            f"log_var_param has {log_var_param.numel()} entries; need one per channel ({channels})"
        )
    with fp32_region(mean):
        var = F.softplus(log_var_param.float()) + eps
        var = var.reshape(1, channels, *([1] * (mean.dim() - 2)))
        t = teacher_feature.detach().float()
        return (0.5 * ((t - mean.float()) ** 2 / var + torch.log(var))).mean()


def _as_map(f: torch.Tensor) -> torch.Tensor:
    return f.reshape(f.shape[0], f.shape[1], 1, 1) if f.dim() == 2 else f


class VID(LayerPair):
    """Variational information distillation between one student and one teacher layer."""

    cite = "Ahn et al. 2019, Variational Information Distillation for Knowledge Transfer (CVPR)"

    def __init__(self, student: str, teacher: str, init_var: float = 5.0, eps: float = 1e-5):
        super().__init__(student, teacher)
        if not eps > 0:
            raise ValueError(f"eps must be > 0 (got {eps}); the authors use 1e-5")
        if not init_var > eps:
            raise ValueError(
                f"init_var must be > eps = {eps} (got {init_var}); the authors use 5.0"
            )
        self.init_var = float(init_var)
        self.eps = float(eps)
        self.mu_net: nn.Module | None = None
        self.alpha: nn.Parameter | None = None

    def setup(self, student_shapes: dict, teacher_shapes: dict) -> None:
        s = feature_shape(student_shapes, self.student, "student")
        t = feature_shape(teacher_shapes, self.teacher, "teacher")
        if len(s) not in (2, 4) or len(t) != len(s):
            raise ValueError(
                f"VID needs two 4-D maps (N, C, H, W) or two vectors (N, D); got student "
                f"{s[1:]} and teacher {t[1:]}"
            )
        c_s, c_t = s[1], t[1]
        self.mu_net = nn.Sequential(
            nn.Conv2d(c_s, c_t, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(c_t, c_t, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(c_t, c_t, kernel_size=1, bias=False),
        )
        alpha0 = math.log(math.expm1(self.init_var - self.eps))  # softplus(alpha0) + eps = init_var
        self.alpha = nn.Parameter(torch.full((c_t,), alpha0))

    def forward(self, student, teacher, batch) -> torch.Tensor:
        if self.mu_net is None:
            raise RuntimeError("VID.setup() was not called: the mean network is sized there")
        f_s = _as_map(student.features[self.student].float())
        f_t = _as_map(teacher.features[self.teacher].detach().float())
        with fp32_region(f_s):
            f_s, f_t = pool_to_common(f_s, f_t)
            return vid_loss(self.mu_net(f_s), self.alpha, f_t, self.eps)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, init_var={self.init_var}, eps={self.eps}"
