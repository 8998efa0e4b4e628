"""Logit standardization (Sun et al., CVPR 2024) and the KD option that uses it."""

from __future__ import annotations

import math

import pytest
import torch
from loss_helpers import softmax

from distill.distiller import Outputs
from distill.losses.kd import KD, kd_loss
from distill.losses.standardize import standardize_logits


def test_hand_value_unbiased_std():
    # [1, 2, 3]: mean 2, squared deviations 1 + 0 + 1 = 2, unbiased var 2 / (3 - 1) = 1.
    z = standardize_logits(torch.tensor([[1.0, 2.0, 3.0]]))
    assert z.tolist()[0] == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)


def test_hand_value_four_classes():
    # [0, 0, 0, 4]: mean 1, deviations -1, -1, -1, 3, sum of squares 12, var 12 / 3 = 4, std 2.
    z = standardize_logits(torch.tensor([[0.0, 0.0, 0.0, 4.0], [2.0, 2.0, 2.0, 6.0]]))
    expected = [-0.5, -0.5, -0.5, 1.5]
    assert z[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert z[1].tolist() == pytest.approx(expected, abs=1e-6)  # a shift changes nothing


def test_affine_invariance_and_constant_row():
    x = torch.randn(5, 10)
    assert torch.allclose(standardize_logits(3.0 * x - 7.0), standardize_logits(x), atol=1e-5)
    z = standardize_logits(torch.full((2, 4), 5.0))
    assert torch.equal(z, torch.zeros(2, 4))


def test_fp32_output_from_half_input():
    z = standardize_logits(torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float16))
    assert z.dtype == torch.float32


def test_bad_arguments():
    with pytest.raises(ValueError, match="eps"):
        standardize_logits(torch.randn(2, 3), eps=0.0)
    with pytest.raises(ValueError, match="2 classes"):
        standardize_logits(torch.randn(2, 1))


def _out(logits):
    return Outputs(logits)


def test_kd_standardized_hand_value():
    # student [1, 2, 3] -> [-1, 0, 1]; teacher [0, 0, 6]: mean 2, deviations -2, -2, 4,
    # sum of squares 24, unbiased var 12 -> [-2, -2, 4] / sqrt(12). Base temperature T = 2.
    T = 2.0
    z_s = [-1.0, 0.0, 1.0]
    r12 = math.sqrt(12.0)
    z_t = [-2.0 / r12, -2.0 / r12, 4.0 / r12]
    p_s = softmax([v / T for v in z_s])
    p_t = softmax([v / T for v in z_t])
    expected = T**2 * sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))

    term = KD(T=T, standardize=True)
    s = torch.tensor([[1.0, 2.0, 3.0]])
    t = torch.tensor([[0.0, 0.0, 6.0]])
    got = term(_out(s), _out(t), (None, torch.tensor([0]), None))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_kd_standardized_ignores_scale_and_shift():
    t = torch.randn(4, 10)
    s = 5.0 * t - 2.0
    batch = (None, torch.zeros(4, dtype=torch.long), None)
    assert KD(T=2.0, standardize=True)(_out(s), _out(t), batch).item() == pytest.approx(0, abs=1e-5)
    assert KD(T=2.0)(_out(s), _out(t), batch).item() > 0.1


def test_kd_default_unchanged():
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    batch = (None, torch.zeros(3, dtype=torch.long), None)
    assert torch.equal(KD(T=3.0)(_out(s), _out(t), batch), kd_loss(s, t, 3.0))


def test_kd_standardized_gradient_and_batch_invariance():
    s = torch.randn(3, 6, requires_grad=True)
    t = torch.randn(3, 6)
    term = KD(T=2.0, standardize=True)
    loss = term(_out(s), _out(t), (None, torch.zeros(3, dtype=torch.long), None))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    twice = term(_out(s.detach().repeat(2, 1)), _out(t.repeat(2, 1)), (None, None, None))
    assert twice.item() == pytest.approx(loss.item(), rel=1e-5)


def test_kd_bad_standardize_flag():
    with pytest.raises(ValueError, match="standardize"):
        KD(standardize="yes")
