"""kd_loss and the KD term against values worked out by hand in plain Python."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distill import KD, Distiller, Outputs, kd_loss


def hand_kd(student: list[list[float]], teacher: list[list[float]], T: float) -> float:
    """T^2 * (1/B) * sum p_t * (log p_t - log softmax(s/T)), with 0 * log 0 = 0, in floats."""
    total = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        t_max = max(v / T for v in t_row)
        t_exp = [math.exp(v / T - t_max) for v in t_row]
        p_t = [e / sum(t_exp) for e in t_exp]
        s_max = max(v / T for v in s_row)
        log_z = s_max + math.log(sum(math.exp(v / T - s_max) for v in s_row))
        log_p_s = [v / T - log_z for v in s_row]
        for p, lq in zip(p_t, log_p_s, strict=True):
            if p > 0:
                total += p * (math.log(p) - lq)
    return T * T * total / len(student)


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_t1_two_classes_written_out():
    # teacher [1, 0] -> p_t = [e/(e+1), 1/(e+1)]; student [0, 0] -> p_s = [1/2, 1/2]
    e = math.exp(1.0)
    p0, p1 = e / (e + 1), 1 / (e + 1)
    expected = p0 * (math.log(p0) - math.log(0.5)) + p1 * (math.log(p1) - math.log(0.5))
    got = kd_loss(t([[0.0, 0.0]]), t([[1.0, 0.0]]), T=1.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert hand_kd([[0.0, 0.0]], [[1.0, 0.0]], 1.0) == pytest.approx(expected, rel=1e-12)


def test_t1_three_classes_written_out():
    # teacher [2, 1, 0], student [0, 1, 0]
    zt = math.exp(2) + math.exp(1) + math.exp(0)
    p = [math.exp(2) / zt, math.exp(1) / zt, math.exp(0) / zt]
    zs = math.exp(0) + math.exp(1) + math.exp(0)
    log_q = [0 - math.log(zs), 1 - math.log(zs), 0 - math.log(zs)]
    expected = sum(p[i] * (math.log(p[i]) - log_q[i]) for i in range(3))
    got = kd_loss(t([[0.0, 1.0, 0.0]]), t([[2.0, 1.0, 0.0]]), T=1.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_t4_two_samples_batchmean_and_t_squared():
    student = [[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]]
    teacher = [[4.0, 0.0, -4.0], [-2.0, 6.0, 2.0]]
    T = 4.0

    def row_kl(s, tt):
        zt = sum(math.exp(v / T) for v in tt)
        zs = sum(math.exp(v / T) for v in s)
        return sum(
            (math.exp(tv / T) / zt) * (math.log(math.exp(tv / T) / zt) - (sv / T - math.log(zs)))
            for sv, tv in zip(s, tt, strict=True)
        )

    expected = T**2 * (row_kl(student[0], teacher[0]) + row_kl(student[1], teacher[1])) / 2
    got = kd_loss(t(student), t(teacher), T=T)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert got.item() == pytest.approx(hand_kd(student, teacher, T), rel=1e-5)


def test_underflowing_teacher_probability_contributes_zero():
    # softmax([0, -1000]) underflows to exactly [1, 0]: p log p must count as 0, not NaN.
    teacher, student = t([[0.0, -1000.0]]), t([[0.0, 0.0]])
    assert torch.softmax(teacher, -1)[0, 1].item() == 0.0  # the premise of the test
    got = kd_loss(student, teacher, T=1.0)
    assert torch.isfinite(got)
    # 1 * (log 1 - log 1/2) + 0 = log 2
    assert got.item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_underflow_gradient_is_finite_and_analytic():
    # dL/ds = T/B * (softmax(s/T) - p_t) = [1/2 - 1, 1/2 - 0] at T=1, B=1
    student = t([[0.0, 0.0]]).requires_grad_(True)
    kd_loss(student, t([[0.0, -1000.0]]), T=1.0).backward()
    assert torch.isfinite(student.grad).all()
    assert student.grad[0].tolist() == pytest.approx([-0.5, 0.5], abs=1e-6)


def test_extreme_student_logits_are_finite():
    student, teacher = [[0.0, -1000.0]], [[0.0, 0.0]]
    # 0.5 * (log 0.5 - log(1/(1+e^-1000))) + 0.5 * (log 0.5 - (-1000 - log(1+e^-1000)))
    expected = 0.5 * (math.log(0.5) - 0.0) + 0.5 * (math.log(0.5) + 1000.0)
    got = kd_loss(t(student), t(teacher), T=1.0)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_gradient_matches_closed_form_at_t4():
    student = [[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]]
    teacher = [[4.0, 0.0, -4.0], [-2.0, 6.0, 2.0]]
    T, B = 4.0, 2

    def softmax(row):
        z = sum(math.exp(v / T) for v in row)
        return [math.exp(v / T) / z for v in row]

    expected = [
        [T / B * (q - p) for q, p in zip(softmax(s), softmax(tt), strict=True)]
        for s, tt in zip(student, teacher, strict=True)
    ]
    s = t(student).requires_grad_(True)
    kd_loss(s, t(teacher), T=T).backward()
    for got_row, exp_row in zip(s.grad.tolist(), expected, strict=True):
        assert got_row == pytest.approx(exp_row, abs=1e-6)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 20.0])
def test_zero_when_student_equals_teacher(T):
    logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(0)) * 5
    # fp32 rounding of log(softmax) vs log_softmax (~5e-8) is multiplied by T^2, so the
    # bound is 1e-6 up to T = 4 and grows with T^2 beyond.
    bound = 1e-6 * max(1.0, T**2 / 16)
    assert abs(kd_loss(logits.clone(), logits.clone(), T).item()) < bound


def test_batchmean_invariant_to_repeating_the_batch():
    g = torch.Generator().manual_seed(1)
    s, te = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g) * 3
    once = kd_loss(s, te, 3.0).item()
    twice = kd_loss(torch.cat([s, s]), torch.cat([te, te]), 3.0).item()
    assert twice == pytest.approx(once, rel=1e-6)
    assert once > 0


def test_positive_when_student_differs_from_teacher():
    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        s, te = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
        assert kd_loss(s, te, 2.0).item() > 0


@pytest.mark.parametrize("T", [0, 0.0, -1.0, float("nan")])
def test_kd_module_rejects_non_positive_temperature(T):
    with pytest.raises(ValueError, match="T must be > 0"):
        KD(T=T)


def test_kd_module_uses_its_temperature():
    s, te = t([[1.0, -2.0, 0.5]]), t([[4.0, 0.0, -4.0]])
    got = KD(T=2.0)(Outputs(s), Outputs(te), None)
    assert got.item() == pytest.approx(hand_kd(s.tolist(), te.tolist(), 2.0), rel=1e-5)


def _models():
    torch.manual_seed(0)
    return nn.Linear(4, 3), nn.Linear(4, 3)


def test_distiller_gradients_reach_student_only():
    teacher, student = _models()
    distiller = Distiller(teacher, student, {"kd": (KD(T=2.0), 1.0)}, ce_weight=0.5)
    x = torch.randn(6, 4)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    distiller([x, y]).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_distiller_kd_only_gradients_reach_student_only():
    teacher, student = _models()
    distiller = Distiller(teacher, student, {"kd": (KD(T=4.0), 1.0)}, ce_weight=0.0)
    x = torch.randn(6, 4)
    out = distiller([x, torch.full((6,), -1)])
    out.loss.backward()
    assert out.terms["ce"].item() == 0.0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_kd_module_does_not_backprop_into_teacher():
    # Used directly (outside a Distiller), on teacher outputs computed with autograd on,
    # the KD term must still treat the teacher's logits as fixed soft targets.
    teacher, student = _models()
    x = torch.randn(6, 4)
    loss = KD(T=2.0)(Outputs(student(x)), Outputs(teacher(x)), [x])
    loss.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
