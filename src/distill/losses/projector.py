"""Projectors that map a student feature to a teacher feature's shape.

Sized from shapes probed once at setup (batch dimension included).

- `make_projector` (every term's default): 4-D maps get a 1x1 conv + BatchNorm, with adaptive
  average pooling when the spatial sizes differ; 2-D features get a linear layer. Equal shapes
  need no projector. No activation: the output can take any sign.
- `reference_regressor`: RepDistiller's / mdistiller's FitNet regressor (`ConvReg`): a conv
  with bias + BatchNorm + ReLU, always present, whose conv changes the spatial size itself
  (see its docstring). FitNet's `regressor="reference"`.
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


def reference_regressor(student_shape, teacher_shape) -> nn.Sequential:
    """The references' FitNet regressor: conv (with bias) + BatchNorm + ReLU, (N, C_s, H_s, W_s)
    -> (N, C_t, H_t, W_t), built even when the shapes agree. The conv is chosen by the sizes:

    - student map twice the teacher's:   3x3 conv, stride 2, padding 1
    - student map half the teacher's:    4x4 transposed conv, stride 2, padding 1
    - otherwise (student at least as large): conv with kernel (1 + H_s - H_t, 1 + W_s - W_t),
      stride 1, no padding (a 1x1 conv when the sizes agree)

    RepDistiller's `ConvReg` decides on the heights alone (its maps are square); here a rule
    applies when both height and width satisfy it, which is the same on square maps and never
    builds a conv whose output misses the teacher's width.
    """
    s, t = tuple(student_shape), tuple(teacher_shape)
    if len(s) != 4 or len(t) != 4:
        raise ValueError(
            f"the reference FitNet regressor is a convolution and needs 4-D maps (N, C, H, W); got "
            f"student {s[1:]} and teacher {t[1:]}. Use regressor='linear' (the default) for vectors"
        )
    (c_s, h_s, w_s), (c_t, h_t, w_t) = s[1:], t[1:]
    if h_s == 2 * h_t and w_s == 2 * w_t:
        conv: nn.Module = nn.Conv2d(c_s, c_t, kernel_size=3, stride=2, padding=1)
    elif 2 * h_s == h_t and 2 * w_s == w_t:
        conv = nn.ConvTranspose2d(c_s, c_t, kernel_size=4, stride=2, padding=1)
    elif h_s >= h_t and w_s >= w_t:
        conv = nn.Conv2d(c_s, c_t, kernel_size=(1 + h_s - h_t, 1 + w_s - w_t))
    else:
        raise ValueError(
            f"the reference FitNet regressor has no rule for a student map of {h_s}x{w_s} and a "
            f"teacher map of {h_t}x{w_t}: the student map must be twice, half, or no smaller "
            "than the teacher's. Use regressor='linear' (the default), which pools instead"
        )
    return nn.Sequential(conv, nn.BatchNorm2d(c_t), nn.ReLU())
