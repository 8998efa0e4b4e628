"""The PyTorch tutorial's `train_knowledge_distillation`, kept exactly, made safe.

Same signature, optimizer, loss and meaning as the classic loop, so code written against the
tutorial works unchanged and trains the same student. Differences, all deliberate:
- a teacher probability that underflows to 0 contributes 0 to the KD term instead of NaN
  (see losses/kd.py);
- batches may be (inputs, labels) or (inputs, labels, index), as distill's datasets yield;
- its arguments are checked before the loop (a DistillError naming the fix);
- the per-epoch running losses are returned as well as printed;
- the running loss is summed on the device and read once per epoch, not synchronised every step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .contracts import as_batch
from .engine import check_length
from .errors import DistillError
from .losses.kd import kd_loss


def _check_arguments(teacher, student, train_loader, epochs, learning_rate, T,
                     soft_target_loss_weight, ce_loss_weight) -> None:
    """The arguments, checked before the loop starts (the loop is the tutorial's, unchanged)."""
    for role, model in (("teacher", teacher), ("student", student)):
        if not isinstance(model, nn.Module):
            raise DistillError(f"train_knowledge_distillation: {role} must be a torch.nn.Module, "
                               f"not a {type(model).__name__}.")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise DistillError(f"train_knowledge_distillation: epochs must be an integer >= 1 (got {epochs!r}).")
    numbers = {"learning_rate": (learning_rate, False), "T": (T, False),
               "soft_target_loss_weight": (soft_target_loss_weight, True),
               "ce_loss_weight": (ce_loss_weight, True)}
    for name, (value, zero_ok) in numbers.items():
        try:
            v = float(value)
        except (TypeError, ValueError):
            v = math.nan
        if not math.isfinite(v) or v < 0 or (v == 0 and not zero_ok):
            raise DistillError(
                f"train_knowledge_distillation: {name} must be a finite number "
                f"{'>= 0' if zero_ok else '> 0'} (got {value!r}); the tutorial uses "
                "learning_rate=0.001, T=2, soft_target_loss_weight=0.25, ce_loss_weight=0.75."
            )
    check_length(train_loader, "train_loader")  # the epoch's mean loss divides by it


def train_knowledge_distillation(
    teacher: nn.Module,
    student: nn.Module,
    train_loader,
    epochs: int,
    learning_rate: float,
    T: float,
    soft_target_loss_weight: float,
    ce_loss_weight: float,
    device,
) -> list[float]:
    """Train `student` from `teacher` with Adam; return the mean loss of each epoch."""
    _check_arguments(teacher, student, train_loader, epochs, learning_rate, T,
                     soft_target_loss_weight, ce_loss_weight)
    optimizer = torch.optim.Adam(student.parameters(), lr=learning_rate)
    teacher.eval()
    student.train()
    history = []
    for epoch in range(epochs):
        running_loss = torch.zeros((), dtype=torch.float64, device=device)
        for item in train_loader:
            batch = as_batch(item)  # (inputs, labels[, index]) tensors: a dict would be KeyError: 0
            inputs, labels = batch.inputs.to(device), batch.targets.to(device)
            optimizer.zero_grad()
            with torch.no_grad():
                teacher_logits = teacher(inputs)
            student_logits = student(inputs)
            soft_targets_loss = kd_loss(student_logits, teacher_logits, T)
            label_loss = F.cross_entropy(student_logits, labels)
            loss = soft_target_loss_weight * soft_targets_loss + ce_loss_weight * label_loss
            loss.backward()
            optimizer.step()
            running_loss += loss.detach()
        history.append(running_loss.item() / len(train_loader))
        print(f"Epoch {epoch + 1}/{epochs}, Loss: {history[-1]}")
    return history
