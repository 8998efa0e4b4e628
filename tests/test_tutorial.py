"""distill.train_knowledge_distillation against the PyTorch tutorial's loop, kept verbatim here."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.optim as optim
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from distill import train_knowledge_distillation
from distill.data.loader import TensorLoader

DEVICE = torch.device("cpu")


def classic_train_knowledge_distillation(teacher, student, train_loader, epochs, learning_rate, T, soft_target_loss_weight, ce_loss_weight, device):
    """The tutorial's loop, verbatim except that it also returns the per-epoch losses."""
    history = []  # (added for the test)
    ce_loss = nn.CrossEntropyLoss()
    optimizer = optim.Adam(student.parameters(), lr=learning_rate)

    teacher.eval()  # Teacher set to evaluation mode
    student.train() # Student to train mode

    for epoch in range(epochs):
        running_loss = 0.0
        for inputs, labels in train_loader:
            inputs, labels = inputs.to(device), labels.to(device)

            optimizer.zero_grad()

            # Forward pass with the teacher model - do not save gradients here as we do not change the teacher's weights
            with torch.no_grad():
                teacher_logits = teacher(inputs)

            # Forward pass with the student model
            student_logits = student(inputs)

            #Soften the student logits by applying softmax first and log() second
            soft_targets = nn.functional.softmax(teacher_logits / T, dim=-1)
            soft_prob = nn.functional.log_softmax(student_logits / T, dim=-1)

            # Calculate the soft targets loss. Scaled by T**2 as suggested by the authors of the paper "Distilling the knowledge in a neural network"
            soft_targets_loss = torch.sum(soft_targets * (soft_targets.log() - soft_prob)) / soft_prob.size()[0] * (T**2)

            # Calculate the true label loss
            label_loss = ce_loss(student_logits, labels)

            # Weighted sum of the two losses
            loss = soft_target_loss_weight * soft_targets_loss + ce_loss_weight * label_loss

            loss.backward()
            optimizer.step()

            running_loss += loss.item()

        print(f"Epoch {epoch+1}/{epochs}, Loss: {running_loss / len(train_loader)}")
        history.append(running_loss / len(train_loader))  # (added for the test)
    return history


DIM, CLASSES, N = 12, 5, 96


def _data():
    g = torch.Generator().manual_seed(123)
    x = torch.randn(N, DIM, generator=g)
    y = torch.randint(0, CLASSES, (N,), generator=g)
    return x, y


def _loader(shuffle=True):
    """The same DataLoader, batch order included, every time it is called."""
    x, y = _data()
    return DataLoader(
        TensorDataset(x, y), batch_size=16, shuffle=shuffle,
        generator=torch.Generator().manual_seed(7),
    )


def _teacher():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(DIM, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, CLASSES))


def _student():
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(DIM, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, CLASSES))


class Scaled(nn.Module):
    """A teacher so confident that softmax(logits / T) underflows to exact zeros."""

    def __init__(self, net: nn.Module, scale: float):
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, x):
        return self.net(x) * self.scale


def _run(fn, teacher, student, loader, epochs=3, T=2.0, seed=99):
    torch.manual_seed(seed)  # the students' dropout draws
    return fn(teacher, student, loader, epochs, 0.01, T, 0.75, 0.25, DEVICE)


def _max_param_diff(a: nn.Module, b: nn.Module) -> float:
    return max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters(), strict=True))


def _params_finite(m: nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in m.parameters())


def test_same_student_and_losses_as_the_tutorial():
    teacher, student0 = _teacher(), _student()
    classic_student, distill_student = copy.deepcopy(student0), copy.deepcopy(student0)

    classic = _run(classic_train_knowledge_distillation, teacher, classic_student, _loader(), epochs=4)
    ours = _run(train_knowledge_distillation, teacher, distill_student, _loader(), epochs=4)

    assert _max_param_diff(student0, classic_student) > 1e-3  # training did change the weights
    # another implementation of the same loss (kd_loss masks p = 0 terms, the epoch loss is summed
    # as a tensor), so only the same to rounding; equal bit for bit on the CPUs tried so far
    assert _max_param_diff(classic_student, distill_student) <= 1e-6
    assert len(ours) == len(classic) == 4
    assert ours == pytest.approx(classic, rel=1e-6, abs=1e-9)
    assert all(math.isfinite(v) for v in classic)
    assert classic[-1] < classic[0]  # it trains


def test_teacher_is_untouched_and_in_eval_mode():
    teacher, student = _teacher(), _student()
    before = copy.deepcopy(teacher.state_dict())
    teacher.train()
    _run(train_knowledge_distillation, teacher, student, _loader(), epochs=1)
    assert not teacher.training
    assert student.training
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in teacher.parameters())


def test_underflowing_teacher_gives_nan_in_tutorial_but_finite_in_distill():
    teacher = Scaled(_teacher(), 1e4)
    T = 2.0
    with torch.no_grad():
        x, _ = _data()
        p = torch.softmax(teacher.eval()(x) / T, dim=-1)
    assert (p == 0).any()  # the premise: some teacher probabilities are exactly 0

    student0 = _student()
    classic_student, distill_student = copy.deepcopy(student0), copy.deepcopy(student0)
    classic = _run(classic_train_knowledge_distillation, teacher, classic_student, _loader(), epochs=3, T=T)
    ours = _run(train_knowledge_distillation, teacher, distill_student, _loader(), epochs=3, T=T)

    assert all(math.isnan(v) for v in classic)  # 0 * log(0) = 0 * -inf = NaN in the tutorial
    assert all(math.isfinite(v) for v in ours)
    assert _params_finite(distill_student)
    assert _max_param_diff(student0, distill_student) > 1e-3  # and it did train
    # The NaN is in the tutorial's reported loss only: d/d(log p_s) of p * (log p - log p_s) is
    # -p = 0, so its gradients (and weights) stay finite, and the fix must not change training
    # (to rounding: another implementation of the loss, as above).
    assert _max_param_diff(classic_student, distill_student) <= 1e-6


def test_accepts_distill_batches():
    x, y = _data()
    teacher, student0 = _teacher(), _student()
    a, b = copy.deepcopy(student0), copy.deepcopy(student0)
    # a generator of its own, so that DataLoader does not draw from the global RNG (dropout)
    plain = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False, generator=torch.Generator())
    triples = TensorLoader(x, y, batch_size=16, shuffle=False)
    assert next(iter(triples)).index is not None  # distill's loaders yield Batches with an index
    ours_plain = _run(train_knowledge_distillation, teacher, a, plain, epochs=3)
    ours_triples = _run(train_knowledge_distillation, teacher, b, triples, epochs=3)
    classic = _run(classic_train_knowledge_distillation, teacher, copy.deepcopy(student0), plain, epochs=3)
    # the same function on the same batches (only the loader's type differs): bit for bit
    assert ours_triples == ours_plain
    assert _max_param_diff(a, b) == 0.0
    assert ours_triples == pytest.approx(classic, rel=1e-6)  # another implementation: rounding


def test_prints_one_line_per_epoch(capsys):
    history = _run(train_knowledge_distillation, _teacher(), _student(), _loader(), epochs=3)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        assert line.startswith(f"Epoch {i + 1}/3, Loss: ")
        assert float(line.rsplit(" ", 1)[1]) == pytest.approx(history[i], rel=1e-9)
