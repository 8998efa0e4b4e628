"""Neuron selectivity transfer: hand-worked MMD values (generic checks: test_registry.py)."""

import math

import pytest
import torch

from distill.losses.nst import NST, nst_loss


def mmd2(s, t):
    """Squared MMD with k(x, y) = (x . y)^2 over lists of already-normalized vectors."""

    def k(x, y):
        return sum(a * b for a, b in zip(x, y, strict=True)) ** 2

    def mean_k(xs, ys):
        return sum(k(x, y) for x in xs for y in ys) / (len(xs) * len(ys))

    return mean_k(s, s) + mean_k(t, t) - 2 * mean_k(s, t)


def test_hand_value_single_sample():
    # student channels [3, 4] -> [0.6, 0.8] and [1, 0]; teacher channel [0, 2] -> [0, 1]
    f_s = torch.tensor([[3.0, 4.0], [1.0, 0.0]]).reshape(1, 2, 1, 2)
    f_t = torch.tensor([0.0, 2.0]).reshape(1, 1, 1, 2)
    # k_ss: (1 + 0.36 + 0.36 + 1) / 4 = 0.68; k_tt = 1; k_st: (0.64 + 0) / 2 = 0.32
    expected = 0.68 + 1.0 - 2 * 0.32
    assert expected == pytest.approx(mmd2([[0.6, 0.8], [1.0, 0.0]], [[0.0, 1.0]]))
    assert nst_loss(f_s, f_t).item() == pytest.approx(expected, rel=1e-6)


def test_hand_value_batch_average():
    r = 1 / math.sqrt(2)
    f_s = torch.tensor([[[3.0, 4.0], [1.0, 0.0]], [[1.0, 1.0], [1.0, -1.0]]]).reshape(2, 2, 1, 2)
    f_t = torch.tensor([[0.0, 2.0], [1.0, 0.0]]).reshape(2, 1, 1, 2)
    first = mmd2([[0.6, 0.8], [1.0, 0.0]], [[0.0, 1.0]])  # 1.04
    second = mmd2([[r, r], [r, -r]], [[1.0, 0.0]])  # 0.5 + 1 - 2 * 0.5 = 0.5
    assert second == pytest.approx(0.5)
    assert nst_loss(f_s, f_t).item() == pytest.approx((first + second) / 2, rel=1e-6)


def test_pools_the_larger_map():
    # teacher 2x4 pooled to the student's 1x2: halves average to [1, 0] -> normalized [1, 0]
    f_s = torch.tensor([[3.0, 4.0], [1.0, 0.0]]).reshape(1, 2, 1, 2)
    f_t = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]]).reshape(1, 1, 2, 4)
    expected = mmd2([[0.6, 0.8], [1.0, 0.0]], [[1.0, 0.0]])  # 0.68 + 1 - (0.36 + 1)
    assert nst_loss(f_s, f_t).item() == pytest.approx(expected, rel=1e-6)


def test_no_trainable_parts_and_errors():
    assert list(NST("layer2", "layer3").parameters()) == []
    with pytest.raises(ValueError, match="N, C, H, W"):
        nst_loss(torch.ones(2, 3), torch.ones(2, 3))
