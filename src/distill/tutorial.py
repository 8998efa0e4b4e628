"""The PyTorch tutorial's `train_knowledge_distillation`, kept exactly, made safe.

Same signature, optimizer, loss and meaning as the classic loop, so code written against the
tutorial works unchanged and trains the same student. Differences, all deliberate:
- a teacher probability that underflows to 0 contributes 0 to the KD term instead of NaN
  (see losses/kd.py);
- batches may be (inputs, labels) or (inputs, labels, index), as distill's datasets yield;
- the per-epoch running losses are returned as well as printed;
- the running loss is summed on the device and read once per epoch, not synchronised every step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .losses.kd import kd_loss


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
    optimizer = torch.optim.Adam(student.parameters(), lr=learning_rate)
    teacher.eval()
    student.train()
    history = []
    for epoch in range(epochs):
        running_loss = torch.zeros((), dtype=torch.float64, device=device)
        for batch in train_loader:
            inputs, labels = batch[0].to(device), batch[1].to(device)
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
