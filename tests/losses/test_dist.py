"""DIST (Huang et al., NeurIPS 2022): hand-worked values (generic checks: test_registry.py)."""

from __future__ import annotations

import math

import pytest
import torch
from loss_helpers import softmax

from distill.distiller import Outputs
from distill.losses.dist import DIST, dist_loss


def _pearson(u, v):
    mu, mv = sum(u) / len(u), sum(v) / len(v)
    cov = sum((a - mu) * (b - mv) for a, b in zip(u, v, strict=True))
    su = math.sqrt(sum((a - mu) ** 2 for a in u))
    sv = math.sqrt(sum((b - mv) ** 2 for b in v))
    return cov / (su * sv)


def test_hand_value_two_by_two_T2():
    # With 2 values, Pearson's rho is the sign of the product of the two differences.
    # s / T = [[.5, 0], [0, .5]] -> p_s(class 0) = sigmoid(.5) > .5, sigmoid(-.5) < .5
    # t / T = [[0, 1], [0, 1.5]] -> p_t(class 0) = sigmoid(-1) < .5, sigmoid(-1.5) < .5
    # inter: rows agree in sample 2 only -> rho = -1, +1 -> inter = 1 - 0 = 1.
    # intra: class 0 falls from sample 1 to 2 for both (class 1 rises for both) -> intra = 0.
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.0, 2.0], [0.0, 3.0]])
    T = 2.0
    # (tolerance 1e-4: the reference's eps = 1e-8 beside norms of ~0.005 shifts rho by ~2e-6)
    assert dist_loss(s, t, 1.0, 1.0, T).item() == pytest.approx(T**2 * 1.0, abs=1e-4)
    assert dist_loss(s, t, 0.0, 3.0, T).item() == pytest.approx(0.0, abs=1e-4)
    assert dist_loss(s, t, 0.5, 3.0, T).item() == pytest.approx(T**2 * 0.5, abs=1e-4)


def test_hand_value_three_by_three_T1():
    s = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0], [0.0, 0.0, 1.0]]
    t = [[2.0, 0.5, 0.0], [0.0, 1.0, 1.5], [1.0, -1.0, 2.0]]
    ys = [softmax(row) for row in s]
    yt = [softmax(row) for row in t]
    inter = 1 - sum(_pearson(ys[i], yt[i]) for i in range(3)) / 3
    cols_s = [[ys[i][j] for i in range(3)] for j in range(3)]
    cols_t = [[yt[i][j] for i in range(3)] for j in range(3)]
    intra = 1 - sum(_pearson(cols_s[j], cols_t[j]) for j in range(3)) / 3
    beta, gamma = 1.0, 2.0
    got = dist_loss(torch.tensor(s), torch.tensor(t), beta, gamma, 1.0)
    assert got.item() == pytest.approx(beta * inter + gamma * intra, rel=1e-5)


def test_hand_value_three_by_three_T3():
    s = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0], [0.0, 0.0, 1.0]]
    t = [[2.0, 0.5, 0.0], [0.0, 1.0, 1.5], [1.0, -1.0, 2.0]]
    T = 3.0
    ys = [softmax([v / T for v in row]) for row in s]
    yt = [softmax([v / T for v in row]) for row in t]
    inter = 1 - sum(_pearson(ys[i], yt[i]) for i in range(3)) / 3
    intra = (
        1
        - sum(
            _pearson([ys[i][j] for i in range(3)], [yt[i][j] for i in range(3)]) for j in range(3)
        )
        / 3
    )
    got = dist_loss(torch.tensor(s), torch.tensor(t), 2.0, 0.5, T)
    assert got.item() == pytest.approx(T**2 * (2.0 * inter + 0.5 * intra), rel=1e-5)


def test_batch_of_one_intra_is_constant_one():
    s, t = torch.randn(1, 5), torch.randn(1, 5)
    inter_only = dist_loss(s, t, 1.0, 0.0, 2.0).item()
    assert dist_loss(s, t, 1.0, 1.0, 2.0).item() == pytest.approx(inter_only + 4.0, rel=1e-5)


def test_module_uses_its_hyperparameters_and_no_labels():
    s, t = torch.randn(5, 6), torch.randn(5, 6)
    term = DIST(beta=2.0, gamma=0.5, T=4.0)
    unlabelled = (None, torch.full((5,), -1), torch.arange(5))
    got = term(Outputs(s), Outputs(t), unlabelled)
    assert got.item() == pytest.approx(dist_loss(s, t, 2.0, 0.5, 4.0).item())
    assert list(term.parameters()) == []


@pytest.mark.parametrize("kwargs", [{"beta": -1.0}, {"gamma": -0.5}, {"T": 0.0}, {"T": -2.0}])
def test_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        DIST(**kwargs)


def test_pure_function_gives_the_teacher_logits_no_gradient():
    # like every other pure loss: the teacher is a fixed target, even when its logits carry a graph
    s = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    dist_loss(s, t, T=2.0).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0
