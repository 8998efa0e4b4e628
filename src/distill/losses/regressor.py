"""Regressor MSE on feature maps, from the PyTorch "Knowledge Distillation Tutorial"
(A. Chariton, pytorch.org/tutorials/beginner/knowledge_distillation_tutorial.html, 2023).

    REG = mean over all elements of (conv3x3(f_s) - f_t)^2

f_s is a student feature map (N, C_s, H, W), f_t the teacher's (N, C_t, H, W) and conv3x3 a
trainable Conv2d(C_s, C_t, kernel_size=3, padding=1) with bias, as in the tutorial's
ModifiedLightNNRegressor; the MSE is nn.MSELoss's mean over all elements. Tutorial weights:
0.25 for this term, 0.75 for CE. The regressor is built in setup() from the probed shapes, so
any pair of channel counts works; it is always present, even when the shapes already agree
(FitNet, by contrast, skips its projector then).

Tutorial vs. here: the tutorial's maps have equal spatial sizes (8x8). When ours differ, the
student map is adaptive-average pooled to the teacher's spatial size before the regressor, the
same choice as `make_projector`, so the teacher's map is always the target as it is. The
regressor lives in the loss term rather than in the student, so the deployed student carries
no extra layer. The tutorial's idea is FitNets' hint (see fitnet.py) with a 3x3 regressor.

Labels are not used; unlabelled rows (y == -1) count like any other.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import LayerPair, feature_shape, teacher_mse


def regressor_loss(regressed: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the regressed student map and the teacher's map (fp32).

    The teacher feature is a fixed target: no gradient flows into it.
    """
    return teacher_mse(regressed, teacher_feature, "regressor_loss", "regressed")


class Regressor(LayerPair):
    """The tutorial's conv regressor + MSE between one student and one teacher feature map."""

    cite = "PyTorch Knowledge Distillation Tutorial (Chariton 2023), regressor MSE on features"

    def __init__(self, student: str, teacher: str):
        super().__init__(student, teacher)
        self.regressor: nn.Module | None = None

    def setup(self, student_shapes: dict[str, tuple], teacher_shapes: dict[str, tuple]) -> None:
        s = feature_shape(student_shapes, self.student, "student")
        t = feature_shape(teacher_shapes, self.teacher, "teacher")
        if len(s) != 4 or len(t) != 4:
            raise ValueError(
                f"Regressor needs 4-D feature maps (N, C, H, W); got student {s[1:]} from "
                f"'{self.student}' and teacher {t[1:]} from '{self.teacher}'"
            )
        layers: list[nn.Module] = []
        if s[2:] != t[2:]:
            layers.append(nn.AdaptiveAvgPool2d(t[2:]))
        layers.append(nn.Conv2d(s[1], t[1], kernel_size=3, padding=1))
        self.regressor = nn.Sequential(*layers)

    def forward(self, student, teacher, batch) -> torch.Tensor:
        if self.regressor is None:
            raise RuntimeError("Regressor.setup() was not called: the regressor does not exist yet")
        f_s = student.features[self.student].float()
        return regressor_loss(self.regressor(f_s), teacher.features[self.teacher])
