"""Tutorial cosine loss: hand-worked cosines and the generic loss-term checks."""

import math

import pytest
import torch
from torch import nn

from distill.distiller import Outputs
from distill.losses.cosine import Cosine, cosine_loss


def outs(**features):
    return Outputs(torch.zeros(next(iter(features.values())).size(0), 3), features)


def batch_of(n):
    return (torch.zeros(n, 1), torch.full((n,), -1), torch.arange(n))


def built(s_shape, t_shape):
    term = Cosine("s", "t")
    term.setup({"s": s_shape}, {"t": t_shape})
    return term


def test_hand_value_two_rows():
    h_s = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    h_t = torch.tensor([[1.0, 1.0], [4.0, 3.0]])
    cos = [1 / math.sqrt(2), (3 * 4 + 4 * 3) / (5 * 5)]  # 45 degrees; 24/25
    expected = ((1 - cos[0]) + (1 - cos[1])) / 2
    assert cosine_loss(h_s, h_t).item() == pytest.approx(expected, rel=1e-6)


def test_hand_value_maps_flattened_opposite_and_orthogonal():
    # (2, 1, 2, 1) maps flatten to [1, 2] and [1, 0]; teacher rows [-2, -4] and [0, 5]
    h_s = torch.tensor([[1.0, 2.0], [1.0, 0.0]]).reshape(2, 1, 2, 1)
    h_t = torch.tensor([[-2.0, -4.0], [0.0, 5.0]]).reshape(2, 2, 1, 1)
    expected = ((1 - (-1.0)) + (1 - 0.0)) / 2  # opposite -> 2, orthogonal -> 1
    assert cosine_loss(h_s, h_t).item() == pytest.approx(expected, rel=1e-6)


def test_matches_the_tutorials_cosine_embedding_loss():
    torch.manual_seed(0)
    h_s, h_t = torch.randn(6, 10), torch.randn(6, 10)
    tutorial = nn.CosineEmbeddingLoss()(h_s, h_t, target=torch.ones(6))
    assert cosine_loss(h_s, h_t).item() == pytest.approx(tutorial.item(), rel=1e-6)


def test_module_equal_widths_needs_no_projector():
    term = built((2, 1, 2, 1), (2, 2, 1, 1))  # flattened widths 2 and 2
    assert list(term.parameters()) == []
    h_s = torch.tensor([[1.0, 2.0], [1.0, 0.0]]).reshape(2, 1, 2, 1)
    h_t = torch.tensor([[-2.0, -4.0], [0.0, 5.0]]).reshape(2, 2, 1, 1)
    assert term(outs(s=h_s), outs(t=h_t), batch_of(2)).item() == pytest.approx(1.5)


def test_finite_scalar_fp32_and_gradients():
    torch.manual_seed(0)
    term = built((4, 3, 2, 2), (4, 5, 2, 2))  # widths 12 -> 20: a linear projection
    s = torch.randn(4, 3, 2, 2, dtype=torch.bfloat16, requires_grad=True)
    t = torch.randn(4, 5, 2, 2, requires_grad=True)
    loss = term(outs(s=s), outs(t=t), batch_of(4))
    assert loss.dim() == 0 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    params = list(term.parameters())
    assert params and all(p.grad is not None for p in params)
    assert t.grad is None


def test_zero_when_equal_and_scale_free():
    f = torch.randn(3, 4, 2, 2)
    assert cosine_loss(f, f.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_loss(f, 3 * f).item() == pytest.approx(0.0, abs=1e-6)


def test_repeating_the_batch_keeps_the_value():
    torch.manual_seed(1)
    term = built((3, 8), (3, 5))
    s, t = torch.randn(3, 8), torch.randn(3, 5)
    once = term(outs(s=s), outs(t=t), batch_of(3))
    twice = term(outs(s=torch.cat([s, s])), outs(t=torch.cat([t, t])), batch_of(6))
    assert twice.item() == pytest.approx(once.item(), rel=1e-6)


def test_layers_and_errors():
    term = Cosine("features", "features")
    assert term.student_layers == ["features"] and term.teacher_layers == ["features"]
    with pytest.raises(RuntimeError, match="setup"):
        term(outs(features=torch.ones(1, 2)), outs(features=torch.ones(1, 2)), batch_of(1))
    with pytest.raises(ValueError, match="module path"):
        Cosine("", "features")
    with pytest.raises(ValueError, match="flattened widths"):
        cosine_loss(torch.ones(2, 3), torch.ones(2, 4))
