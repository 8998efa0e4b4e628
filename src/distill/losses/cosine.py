"""Cosine loss on hidden representations, from the PyTorch "Knowledge Distillation Tutorial"
(A. Chariton, pytorch.org/tutorials/beginner/knowledge_distillation_tutorial.html, 2023).

    h     = f flattened per sample                       (B x D)
    cos_b = h_s[b] . h_t[b] / sqrt((||h_s[b]||^2 + eps) * (||h_t[b]||^2 + eps)),  eps = 1e-12
    COS   = mean over b of (1 - cos_b)

This is what the tutorial computes with nn.CosineEmbeddingLoss(target = 1) on the flattened
feature maps (same eps), in fp32. It is 0 when the two representations point the same way and
2 when opposite; scale does not matter. Tutorial weights: 0.25 for this term, 0.75 for CE.

Tutorial vs. here: the term needs equal widths. The tutorial's teacher (2048 flattened values)
is reduced to the student's width (1024) with avg_pool1d(kernel 2) inside its forward, so the
tutorial only works for integer width ratios and compares averaged neighbouring units. We
instead give the student a trainable linear projection, built in setup() from the probed
shapes, whenever the flattened widths differ (none when they agree), and leave the teacher's
representation untouched; this works for any pair of widths. With equal widths the two agree.

Labels are not used; unlabelled rows (y == -1) count like any other.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import LayerPair, feature_shape, flat_shape
from .projector import make_projector

EPS = 1e-12  # nn.CosineEmbeddingLoss's epsilon on the squared norms


def cosine_loss(h_s: torch.Tensor, h_t: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of 1 - cosine similarity of the flattened representations (fp32).

    The teacher representation is a fixed target: no gradient flows into it.
    """
    h_s = h_s.float().reshape(h_s.size(0), -1)
    h_t = h_t.detach().float().reshape(h_t.size(0), -1)
    if h_s.shape != h_t.shape:
        raise ValueError(
            f"cosine_loss needs equal batch sizes and flattened widths; got student "
            f"{tuple(h_s.shape)} and teacher {tuple(h_t.shape)} (project the student first)"
        )
    dot = (h_s * h_t).sum(dim=1)
    norms = ((h_s.pow(2).sum(dim=1) + EPS) * (h_t.pow(2).sum(dim=1) + EPS)).sqrt()
    return (1 - dot / norms).mean()


class Cosine(LayerPair):
    """The tutorial's cosine term between one student layer and one teacher layer."""

    cite = "PyTorch Knowledge Distillation Tutorial (Chariton 2023), cosine loss on hidden states"

    def __init__(self, student: str, teacher: str):
        super().__init__(student, teacher)
        self.projector: nn.Module | None = None

    def setup(self, student_shapes: dict[str, tuple], teacher_shapes: dict[str, tuple]) -> None:
        flat_s = flat_shape(feature_shape(student_shapes, self.student, "student"))
        flat_t = flat_shape(feature_shape(teacher_shapes, self.teacher, "teacher"))
        self.projector = make_projector(flat_s, flat_t)  # Identity or Linear(D_s, D_t)

    def forward(self, student, teacher, batch) -> torch.Tensor:
        if self.projector is None:
            raise RuntimeError("Cosine.setup() was not called: the projector does not exist yet")
        f_s = student.features[self.student].float()
        h_s = self.projector(f_s.reshape(f_s.size(0), -1))
        return cosine_loss(h_s, teacher.features[self.teacher])
