"""Helpers shared by the feature-based loss terms.

- `check_layer`: a layer path given to a term must be a non-empty string.
- `LayerPair`: base of the terms that compare one student layer with one teacher layer; it
  checks both paths and declares them (`student_layers`, `teacher_layers`) to the Distiller.
- `fp32_region`: autocast switched off, so a term computes in fp32 inside mixed precision.
- `feature_shape` / `flat_shape`: a probed feature shape by path, with a clear error when the
  feature was not captured; the shape of that feature flattened per sample.
- `check_same_batch`: student and teacher features must hold the same number of samples.
- `pool_to_common`: adaptive-average-pool two maps down to their common spatial size.
- `teacher_mse`: mean squared error to a teacher feature of the same shape (a fixed target).
"""

from __future__ import annotations

import contextlib
from math import prod

import torch
import torch.nn.functional as F
from torch import nn


def check_layer(name: str, value) -> str:
    """`value` if it is a non-empty module path, else a ValueError naming the argument."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty module path such as 'layer2' (got {value!r})")
    return value


class LayerPair(nn.Module):
    """A term between the feature at `student` (a student module path) and the one at
    `teacher` (a teacher module path). Subclasses add their hyper-parameters after calling
    `super().__init__(student, teacher)`, and append them to `extra_repr`."""

    def __init__(self, student: str, teacher: str):
        super().__init__()
        self.student = check_layer("student", student)
        self.teacher = check_layer("teacher", teacher)
        self.student_layers = [self.student]
        self.teacher_layers = [self.teacher]

    def extra_repr(self) -> str:
        return f"student={self.student!r}, teacher={self.teacher!r}"


def fp32_region(t: torch.Tensor):
    """Autocast off: the loss is computed in fp32 even inside a mixed-precision region."""
    try:
        return torch.autocast(t.device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know
        return contextlib.nullcontext()


def feature_shape(shapes: dict, path: str, role: str) -> tuple:
    """The probed shape of the `role` ("student" / "teacher") feature at `path`."""
    if path not in shapes:
        raise ValueError(
            f"no {role} feature '{path}' was captured (have: {', '.join(shapes) or 'none'})"
        )
    return tuple(shapes[path])


def flat_shape(shape: tuple) -> tuple[int, int]:
    """(N, *rest) -> (N, prod(rest)): the shape of a feature flattened per sample."""
    return shape[0], prod(shape[1:])


def check_same_batch(f_s: torch.Tensor, f_t: torch.Tensor) -> None:
    if f_s.shape[0] != f_t.shape[0]:
        raise ValueError(
            f"student and teacher batches differ in size ({f_s.shape[0]} vs {f_t.shape[0]}); "
            "both features must come from the same batch size"
        )


def pool_to_common(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pool 4-D maps down to their common (min H, min W) spatial size."""
    if f_s.shape[2:] == f_t.shape[2:]:
        return f_s, f_t
    if f_s.dim() != 4 or f_t.dim() != 4:
        raise ValueError(
            f"spatial sizes differ ({tuple(f_s.shape)} vs {tuple(f_t.shape)}); pooling them "
            "to a common size needs 4-D maps (N, C, H, W)"
        )
    size = (min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3]))
    if tuple(f_s.shape[2:]) != size:
        f_s = F.adaptive_avg_pool2d(f_s, size)
    if tuple(f_t.shape[2:]) != size:
        f_t = F.adaptive_avg_pool2d(f_t, size)
    return f_s, f_t


def teacher_mse(
    prediction: torch.Tensor, teacher_feature: torch.Tensor, name: str, role: str, hint: str = ""
) -> torch.Tensor:
    """Mean squared error over all elements, in fp32, between a student-side `prediction` and
    the teacher feature of the same shape. The teacher feature is a fixed target: no gradient
    flows into it. `name`, `role` and `hint` word the error on a shape mismatch."""
    if prediction.shape != teacher_feature.shape:
        raise ValueError(
            f"{name} needs equal shapes; got {role} {tuple(prediction.shape)} and "
            f"teacher {tuple(teacher_feature.shape)}{hint}"
        )
    return F.mse_loss(prediction.float(), teacher_feature.detach().float())
