"""Attention transfer: hand-worked attention maps (generic checks: test_registry.py)."""

import math

import pytest
import torch

from distill.losses.at import AT, at_loss


def test_hand_value_p2_different_channel_counts():
    # student: 2 channels over 2 positions; channel 0 = [1, 2], channel 1 = [3, 0]
    f_s = torch.tensor([[1.0, 2.0], [3.0, 0.0]]).reshape(1, 2, 1, 2)
    f_t = torch.tensor([1.0, 1.0]).reshape(1, 1, 1, 2)
    q_s = [(1**2 + 3**2) / 2, (2**2 + 0**2) / 2]  # channel mean of f^2 = [5, 2]
    n_s = math.sqrt(q_s[0] ** 2 + q_s[1] ** 2)  # sqrt(29)
    a_s = [q_s[0] / n_s, q_s[1] / n_s]
    a_t = [1 / math.sqrt(2), 1 / math.sqrt(2)]
    expected = ((a_s[0] - a_t[0]) ** 2 + (a_s[1] - a_t[1]) ** 2) / 2
    assert at_loss(f_s, f_t).item() == pytest.approx(expected, rel=1e-6)


def test_hand_value_p1_uses_absolute_values():
    f_s = torch.tensor([-3.0, 4.0]).reshape(1, 1, 1, 2)  # |f| = [3, 4] -> a = [0.6, 0.8]
    f_t = torch.tensor([0.0, 5.0]).reshape(1, 1, 1, 2)  # a = [0, 1]
    expected = ((0.6 - 0.0) ** 2 + (0.8 - 1.0) ** 2) / 2  # = 0.2
    assert at_loss(f_s, f_t, p=1).item() == pytest.approx(expected, rel=1e-6)


def test_hand_value_pools_the_larger_map_before_the_power():
    # student 2x4 -> pooled to the teacher's 1x2: each half averages to 1 and 2
    f_s = torch.tensor([[0.0, 2.0, 1.0, 3.0], [0.0, 2.0, 1.0, 3.0]]).reshape(1, 1, 2, 4)
    f_t = torch.tensor([1.0, 1.0]).reshape(1, 1, 1, 2)
    a_s = [1 / math.sqrt(17), 4 / math.sqrt(17)]  # pooled [1, 2], squared [1, 4]
    a_t = [1 / math.sqrt(2), 1 / math.sqrt(2)]
    expected = ((a_s[0] - a_t[0]) ** 2 + (a_s[1] - a_t[1]) ** 2) / 2
    assert at_loss(f_s, f_t).item() == pytest.approx(expected, rel=1e-6)
    # symmetric case: the teacher is the larger one
    assert at_loss(f_t, f_s).item() == pytest.approx(expected, rel=1e-6)


def test_mixed_spatial_sizes_pool_to_the_common_minimum():
    f_s, f_t = torch.randn(2, 3, 4, 2), torch.randn(2, 5, 2, 4)
    assert torch.isfinite(at_loss(f_s, f_t))  # both pooled to 2x2


def test_no_trainable_parts_and_errors():
    term = AT("layer2", "layer3")
    assert list(term.parameters()) == [] and term.p == 2.0
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="p must be > 0"):
            AT("a", "b", p=bad)
    with pytest.raises(ValueError):
        at_loss(torch.ones(2, 3), torch.ones(2, 3))
