"""Live teacher sources (`contracts.TeacherSource`): the teacher itself, run on each batch.

A cache (distill.cache.TeacherCache) or a stored top-k teacher (distill.lm.offline.TopKStore)
is another source; a view cache runs its live source's public `outputs` on the rows it misses.
"""

from __future__ import annotations

import torch
from torch import nn

from .contracts import Batch, Outputs
from .hooks import FeatureCapture
from .models.outputs import logits_of


class LiveTeacher:
    """A classifier teacher's logits and the features hooked at `layers`, computed now."""

    def __init__(self, teacher: nn.Module, layers: list[str]):
        self.teacher = teacher
        self.capture = FeatureCapture(teacher, layers, "teacher")

    @torch.no_grad()
    def outputs(self, inputs: torch.Tensor) -> Outputs:
        # A teacher held in bf16/fp16 to save memory takes inputs of its own dtype.
        dtype = next(self.teacher.parameters(), inputs).dtype
        if inputs.is_floating_point() and dtype != inputs.dtype:
            inputs = inputs.to(dtype)
        logits, features = self.capture.run(self.teacher, inputs)
        return Outputs(logits_of(logits, "teacher"), features)

    def targets(self, batch: Batch) -> Outputs:
        return self.outputs(batch.inputs)

    def set_epoch(self, epoch: int) -> None:
        """Nothing depends on the epoch here."""

    def reference(self) -> None:
        return None
