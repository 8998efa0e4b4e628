"""FitNet hint loss: hand-worked MSE values (generic checks: test_registry.py)."""

import pytest
import torch
from loss_helpers import batch_of, built, outs
from torch import nn

from distill.losses.fitnet import FitNet, fitnet_loss


def test_hand_value_vectors():
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    t = torch.tensor([[0.0, 2.0], [3.0, 6.0]])
    # squared differences 1, 0, 0, 4 over 4 elements
    assert fitnet_loss(s, t).item() == pytest.approx((1 + 0 + 0 + 4) / 4)


def test_hand_value_map():
    s = torch.tensor([1.0, -1.0, 0.5, 2.0]).reshape(1, 1, 2, 2)
    t = torch.tensor([0.0, -3.0, 0.5, 1.0]).reshape(1, 1, 2, 2)
    expected = (1.0**2 + 2.0**2 + 0.0**2 + 1.0**2) / 4
    assert fitnet_loss(s, t).item() == pytest.approx(expected)


def test_module_with_identity_projector_matches_hand_value():
    term = built(FitNet, (2, 2), (2, 2))
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    t = torch.tensor([[0.0, 2.0], [3.0, 6.0]])
    assert list(term.parameters()) == []  # equal shapes: no projector
    assert term(outs(s=s), outs(t=t), batch_of(2)).item() == pytest.approx(1.25)


def test_projector_pools_and_maps_channels():
    term = built(FitNet, (4, 3, 4, 4), (4, 5, 2, 2))
    pool, conv, bn = term.projector
    assert isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size == (2, 2)
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (3, 5, (1, 1))
    assert isinstance(bn, nn.BatchNorm2d)


def test_shape_error():
    with pytest.raises(ValueError, match="equal shapes"):
        fitnet_loss(torch.ones(2, 3), torch.ones(2, 4))
