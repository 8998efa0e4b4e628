"""Similarity-preserving KD: hand-worked Gram matrices (generic checks: test_registry.py)."""

import math

import pytest
import torch

from distill.losses.sp import SP, sp_loss


def frobenius_sq(a, b):
    return sum((a[i][j] - b[i][j]) ** 2 for i in range(len(a)) for j in range(len(a)))


def test_hand_value_identity_vs_correlated():
    f_s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # Q Q^T = I, rows already unit
    f_t = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # Q Q^T = [[2, 1], [1, 1]]
    g_s = [[1.0, 0.0], [0.0, 1.0]]
    g_t = [[2 / math.sqrt(5), 1 / math.sqrt(5)], [1 / math.sqrt(2), 1 / math.sqrt(2)]]
    expected = frobenius_sq(g_s, g_t) / 2**2
    assert sp_loss(f_s, f_t).item() == pytest.approx(expected, rel=1e-6)


def test_hand_value_different_widths_and_map_input():
    # student (2, 1, 1, 2) flattens to [[1, 2], [2, 4]]: Q Q^T = [[5, 10], [10, 20]]
    f_s = torch.tensor([[1.0, 2.0], [2.0, 4.0]]).reshape(2, 1, 1, 2)
    f_t = torch.tensor([[1.0], [-1.0]])  # Q Q^T = [[1, -1], [-1, 1]]
    g_s = [[5 / math.sqrt(125), 10 / math.sqrt(125)], [10 / math.sqrt(500), 20 / math.sqrt(500)]]
    g_t = [[1 / math.sqrt(2), -1 / math.sqrt(2)], [-1 / math.sqrt(2), 1 / math.sqrt(2)]]
    expected = frobenius_sq(g_s, g_t) / 2**2
    assert sp_loss(f_s, f_t).item() == pytest.approx(expected, rel=1e-6)


def test_repeating_the_batch_halves_the_value():
    # A batch-level term, not a per-sample mean: duplicating the batch scales every row norm of
    # Q Q^T by sqrt(2), so each normalized entry by 1/sqrt(2); 4x the entries over 4x B^2.
    torch.manual_seed(1)
    s, t = torch.randn(3, 2, 4, 4), torch.randn(3, 6, 4, 4)
    once = sp_loss(s, t)
    twice = sp_loss(torch.cat([s, s]), torch.cat([t, t]))
    assert twice.item() == pytest.approx(once.item() / 2, rel=1e-5)


def test_no_trainable_parts_and_errors():
    assert list(SP("layer2", "layer3").parameters()) == []
    with pytest.raises(ValueError, match="batch size"):
        sp_loss(torch.ones(2, 3), torch.ones(3, 3))
