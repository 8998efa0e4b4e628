"""DKD (Zhao et al., CVPR 2022): hand-worked values (generic checks: test_registry.py)."""

from __future__ import annotations

import math

import pytest
import torch
from loss_helpers import softmax

from distill.contracts import Batch
from distill.distiller import Outputs
from distill.losses.dkd import DKD, dkd_loss
from distill.losses.kd import kd_loss
from distill.losses.standardize import standardize_logits


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def _dkd_row(s, t, target, alpha, beta, T):
    """One sample's alpha * TCKD + beta * NCKD (before the T^2 / B), from the paper's formula."""
    p_s = softmax([v / T for v in s])
    p_t = softmax([v / T for v in t])
    b_s = [p_s[target], 1 - p_s[target]]
    b_t = [p_t[target], 1 - p_t[target]]
    q_s = [p / (1 - p_s[target]) for j, p in enumerate(p_s) if j != target]
    q_t = [p / (1 - p_t[target]) for j, p in enumerate(p_t) if j != target]
    return alpha * _kl(b_t, b_s) + beta * _kl(q_t, q_s)


def test_hand_value_single_sample_T1():
    # s = [2, 1, 0], t = [3, 0, 1], target 0, T = 1.
    e = math.e
    # TCKD: p_s(target) = e^2 / (e^2 + e + 1), p_t(target) = e^3 / (e^3 + 1 + e).
    ps = e**2 / (e**2 + e + 1)
    pt = e**3 / (e**3 + 1 + e)
    tckd = pt * math.log(pt / ps) + (1 - pt) * math.log((1 - pt) / (1 - ps))
    # NCKD: non-target softmax of [1, 0] (student) vs [0, 1] (teacher):
    # KL = 1/(1+e) * (-1) + e/(1+e) * (+1) = (e - 1) / (e + 1).
    nckd = (e - 1) / (e + 1)
    s, t, y = torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[3.0, 0.0, 1.0]]), torch.tensor([0])
    for alpha, beta in ((1.0, 1.0), (0.5, 8.0)):
        got = dkd_loss(s, t, y, alpha=alpha, beta=beta, T=1.0)
        assert got.item() == pytest.approx(alpha * tckd + beta * nckd, rel=1e-5)


def test_hand_value_batch_T2():
    s = [[2.0, 1.0, 0.0], [0.0, 0.0, 4.0]]
    t = [[3.0, 0.0, 1.0], [1.0, 2.0, 0.0]]
    targets = [0, 2]
    T, alpha, beta = 2.0, 0.5, 2.0
    rows = [_dkd_row(s[i], t[i], targets[i], alpha, beta, T) for i in range(2)]
    expected = T**2 * sum(rows) / 2
    got = dkd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(targets), alpha, beta, T)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_kd_identity():
    # The paper's identity KD = TCKD + (1 - p_t(target)) * NCKD, on one sample at T = 3.
    s, t, T = torch.tensor([[0.5, 2.0, -1.0, 0.3]]), torch.tensor([[1.5, 0.2, 0.0, -0.7]]), 3.0
    pt_target = softmax([v / T for v in t[0].tolist()])[1]
    got = dkd_loss(s, t, torch.tensor([1]), alpha=1.0, beta=1 - pt_target, T=T)
    assert got.item() == pytest.approx(kd_loss(s, t, T).item(), rel=1e-5)


def test_unlabelled_rows_use_teacher_argmax():
    s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 4.0]])
    t = torch.tensor([[3.0, 0.0, 1.0], [1.0, 2.0, 0.0]])  # teacher argmax: 0 and 1
    got = dkd_loss(s, t, torch.tensor([-1, -1]), 1.0, 8.0, 4.0)
    ref = dkd_loss(s, t, torch.tensor([0, 1]), 1.0, 8.0, 4.0)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)


def test_finite_for_saturated_student():
    # p_s(target) rounds to 1 in fp32: log(1 - p) would be -inf; ours stays finite.
    s = torch.tensor([[200.0, 0.0, 0.0]], requires_grad=True)
    loss = dkd_loss(s, torch.tensor([[1.0, 0.0, 0.5]]), torch.tensor([0]), 1.0, 8.0, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def _batch(y):
    return Batch(torch.zeros(len(y), 1), y, torch.arange(len(y)))


def test_module_reads_the_labels_of_the_batch():
    s, t = torch.randn(4, 7), torch.randn(4, 7)
    y = torch.tensor([0, 3, -1, 6])
    term = DKD(alpha=0.5, beta=2.0, T=3.0, warmup=0)
    expected = dkd_loss(s, t, y, 0.5, 2.0, 3.0)
    assert term(Outputs(s), Outputs(t), _batch(y)).item() == pytest.approx(expected.item())
    assert list(term.parameters()) == []


def test_warmup_schedule():
    s, t, y = torch.randn(3, 5), torch.randn(3, 5), torch.tensor([0, 1, 2])
    full = dkd_loss(s, t, y, 1.0, 8.0, 4.0).item()
    term = DKD()  # warmup 20
    assert term(Outputs(s), Outputs(t), _batch(y)).item() == pytest.approx(full / 20, rel=1e-6)
    term.set_epoch(9)  # the 10th epoch
    assert term(Outputs(s), Outputs(t), _batch(y)).item() == pytest.approx(full / 2, rel=1e-6)
    for epoch in (19, 50):
        term.set_epoch(epoch)
        assert term(Outputs(s), Outputs(t), _batch(y)).item() == pytest.approx(full, rel=1e-6)


def test_standardize_option():
    t = torch.randn(3, 6)
    s = 4.0 * t + 1.0
    y = torch.tensor([0, 2, 5])
    term = DKD(T=2.0, warmup=0, standardize=True)
    assert term(Outputs(s), Outputs(t), _batch(y)).item() == pytest.approx(0.0, abs=1e-5)
    s = torch.randn(3, 6)
    expected = dkd_loss(standardize_logits(s), standardize_logits(t), y, 1.0, 8.0, 2.0)
    assert term(Outputs(s), Outputs(t), _batch(y)).item() == pytest.approx(expected.item())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": -1.0},
        {"beta": -0.1},
        {"T": 0.0},
        {"warmup": -1},
        {"warmup": 2.5},
        {"standardize": "no"},
    ],
)
def test_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        DKD(**kwargs)


def test_pure_function_gives_the_teacher_logits_no_gradient():
    # like every other pure loss: the teacher is a fixed target, even when its logits carry a
    # graph (labels -1 use the teacher's argmax, which must not open a path either)
    s = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    dkd_loss(s, t, torch.tensor([0, 3, -1, 2])).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0
