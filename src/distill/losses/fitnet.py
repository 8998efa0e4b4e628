"""Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015 (arXiv:1412.6550).

    FitNet = mean over all elements of (r(f_s) - f_t)^2

f_s is the student's "guided" layer, f_t the teacher's "hint" layer and r a trainable regressor
that takes f_s to f_t's shape. Two regressors (config key `loss.<term>.regressor`):

- "linear" (the default): `make_projector`, a 1x1 conv + BatchNorm for 4-D maps (adaptive
  average pooling first when the spatial sizes differ), a linear layer for vectors, and nothing
  at all when the two shapes already agree. No activation, so r(f_s) can take any value.
- "reference": RepDistiller's and mdistiller's `ConvReg`, `reference_regressor`: conv (with
  bias) + BatchNorm + ReLU, built even for equal shapes; a stride-2 3x3 conv when the student
  map is twice the teacher's, a stride-2 4x4 transposed conv when it is half, else a conv with
  kernel (1 + H_s - H_t, 1 + W_s - W_t). 4-D maps only.

The two are not interchangeable: with the same conv weights the ReLU alone changes the value
(tests/losses/test_fitnet.py works one case by hand). Why "linear" is the default: a ReLU on the
projection makes r(f_s) >= 0, so it cannot match the negative values of pre-activation teacher
features (a BatchNorm output, a residual sum before its ReLU, a transformer's hidden state);
on those the MSE keeps a floor that no student can remove. RepDistiller and mdistiller take
the hint from post-ReLU features (their models return pre-activation features only on
request), which are >= 0, so there the ReLU costs nothing. Here any module's output can be the
hint, and the default makes no assumption about its sign. Choose "reference" to reproduce
RepDistiller/mdistiller, on post-activation features.

Paper vs. reference implementations:
- Normalization. The paper writes the hint loss as 1/2 * ||f_t - r(f_s)||^2 (a sum over
  elements). RepDistiller and mdistiller use the mean squared error over all elements
  (batch, channels and positions), weighted 100 in their CIFAR benchmarks. We follow the
  references: the mean does not grow with batch size or map size, so one weight works across
  layers and batch sizes. To recover the paper's scale multiply the weight by numel / 2.
- Regressor. The paper's regressor is a convolution whose kernel size is chosen so that its
  output has the teacher's spatial size (or a fully connected layer), and the hint stage is
  trained separately, before KD on the whole student. The references' regressor is the
  "reference" option above (on equal sizes: 1x1 conv + BN + ReLU); ours by default drops the
  ReLU and the conv bias (BN's shift replaces it) and pools for size changes. Either way the
  hint term trains jointly with the other terms in a single stage, as in the references.

Labels are not used; unlabelled rows (y == -1) count like any other.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import LayerPair, feature_shape, teacher_mse
from .projector import make_projector, reference_regressor

REGRESSORS = ("linear", "reference")


def fitnet_loss(student_projected: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the projected student feature and the teacher's (fp32).

    The teacher feature is a fixed target: no gradient flows into it.
    """
    return teacher_mse(
        student_projected, teacher_feature, "fitnet_loss", "student",
        " (project the student feature first)",
    )


class FitNet(LayerPair):
    """Hint loss between a student layer (through a trained projector) and a teacher layer."""

    cite = "Romero et al. 2015, FitNets: Hints for Thin Deep Nets (ICLR)"

    def __init__(self, student: str, teacher: str, regressor: str = "linear"):
        super().__init__(student, teacher)
        if regressor not in REGRESSORS:
            raise ValueError(
                f"regressor must be 'linear' or 'reference' (got {regressor!r}); 'linear' (the "
                "default) is a 1x1 conv + BN, 'reference' RepDistiller's conv + BN + ReLU"
            )
        self.regressor = regressor
        self.projector: nn.Module | None = None

    def setup(self, student_shapes: dict[str, tuple], teacher_shapes: dict[str, tuple]) -> None:
        build = reference_regressor if self.regressor == "reference" else make_projector
        self.projector = build(
            feature_shape(student_shapes, self.student, "student"),
            feature_shape(teacher_shapes, self.teacher, "teacher"),
        )

    def forward(self, student, teacher, batch) -> torch.Tensor:
        if self.projector is None:
            raise RuntimeError("FitNet.setup() was not called: the projector does not exist yet")
        f_s = student.features[self.student].float()
        return fitnet_loss(self.projector(f_s), teacher.features[self.teacher])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, regressor={self.regressor!r}"
