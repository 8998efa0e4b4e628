"""Projectors that map a student feature to a teacher feature's shape.

Sized from shapes probed once at setup (batch dimension included). 4-D maps get a 1x1 conv +
BatchNorm (FitNets' regressor in its common modern form), with adaptive average pooling when
the spatial sizes differ; 2-D features get a linear layer. Equal shapes need no projector.
"""

from __future__ import annotations

from torch import nn


def make_projector(student_shape, teacher_shape) -> nn.Module:
    """A trainable module taking a student feature to the teacher feature's shape."""
    s, t = tuple(student_shape), tuple(teacher_shape)
    if s[1:] == t[1:]:
        return nn.Identity()
    if len(s) == 4 and len(t) == 4:
        layers = []
        if s[2:] != t[2:]:
            layers.append(nn.AdaptiveAvgPool2d(t[2:]))
        layers += [nn.Conv2d(s[1], t[1], kernel_size=1, bias=False), nn.BatchNorm2d(t[1])]
        return nn.Sequential(*layers)
    if len(s) == 2 and len(t) == 2:
        return nn.Linear(s[1], t[1])
    raise ValueError(
        f"cannot project a student feature of shape {s[1:]} onto a teacher feature of shape "
        f"{t[1:]}; pick layers that are both 4-D maps (N, C, H, W) or both vectors (N, D)"
    )
