"""Tutorial cosine loss: hand-worked cosines (generic checks: test_registry.py)."""

import math

import pytest
import torch
from loss_helpers import batch_of, built, outs
from torch import nn

from distill.losses.cosine import Cosine, cosine_loss


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
    term = built(Cosine, (2, 1, 2, 1), (2, 2, 1, 1))  # flattened widths 2 and 2
    assert list(term.parameters()) == []
    h_s = torch.tensor([[1.0, 2.0], [1.0, 0.0]]).reshape(2, 1, 2, 1)
    h_t = torch.tensor([[-2.0, -4.0], [0.0, 5.0]]).reshape(2, 2, 1, 1)
    assert term(outs(s=h_s), outs(t=h_t), batch_of(2)).item() == pytest.approx(1.5)


def test_different_widths_get_a_linear_projection():
    term = built(Cosine, (4, 3, 2, 2), (4, 5, 2, 2))  # widths 12 -> 20
    assert isinstance(term.projector, nn.Linear)
    assert (term.projector.in_features, term.projector.out_features) == (12, 20)


def test_scale_free():
    f = torch.randn(3, 4, 2, 2)
    assert cosine_loss(f, 3 * f).item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_loss(f, -0.5 * f).item() == pytest.approx(2.0, abs=1e-6)


def test_width_error():
    with pytest.raises(ValueError, match="flattened widths"):
        cosine_loss(torch.ones(2, 3), torch.ones(2, 4))
