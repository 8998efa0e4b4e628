"""Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015 (arXiv:1412.6550).

    FitNet = mean over all elements of (r(f_s) - f_t)^2

f_s is the student's "guided" layer, f_t the teacher's "hint" layer and r a trainable regressor
that takes f_s to f_t's shape. Here r is `make_projector`: a 1x1 conv + BatchNorm for 4-D maps
(adaptive average pooling first when the spatial sizes differ), a linear layer for vectors, and
nothing at all when the two shapes already agree.

Paper vs. reference implementations:
- Normalization. The paper writes the hint loss as 1/2 * ||f_t - r(f_s)||^2 (a sum over
  elements). RepDistiller and mdistiller use the mean squared error over all elements
  (batch, channels and positions), weighted 100 in their CIFAR benchmarks. We follow the
  references: the mean does not grow with batch size or map size, so one weight works across
  layers and batch sizes. To recover the paper's scale multiply the weight by numel / 2.
- Regressor. The paper's regressor is a convolution whose kernel size is chosen so that its
  output has the teacher's spatial size (or a fully connected layer), and the hint stage is
  trained separately, before KD on the whole student. The references (and we) use a 1x1 conv
  regressor (+ BN) and train the hint term jointly with the other terms in a single stage.

Labels are not used; unlabelled rows (y == -1) count like any other.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import LayerPair, feature_shape, teacher_mse
from .projector import make_projector


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

    def __init__(self, student: str, teacher: str):
        super().__init__(student, teacher)
        self.projector: nn.Module | None = None

    def setup(self, student_shapes: dict[str, tuple], teacher_shapes: dict[str, tuple]) -> None:
        self.projector = make_projector(
            feature_shape(student_shapes, self.student, "student"),
            feature_shape(teacher_shapes, self.teacher, "teacher"),
        )

    def forward(self, student, teacher, batch) -> torch.Tensor:
        if self.projector is None:
            raise RuntimeError("FitNet.setup() was not called: the projector does not exist yet")
        f_s = student.features[self.student].float()
        return fitnet_loss(self.projector(f_s), teacher.features[self.teacher])
