"""Probabilistic knowledge transfer: hand-worked conditional distributions
(generic checks: test_registry.py)."""

import math

import pytest
import torch

from distill.distiller import Outputs
from distill.losses.pkt import PKT, pkt_loss


def test_hand_value_two_samples():
    # student rows orthogonal: K = [[1, .5], [.5, 1]] -> P_s rows (2/3, 1/3) and (1/3, 2/3)
    # teacher at 45 degrees: cos = 1/sqrt2, K01 = c = (1 + 1/sqrt2) / 2
    c = (1 + 1 / math.sqrt(2)) / 2
    a, b = 1 / (1 + c), c / (1 + c)
    row_kl = a * math.log(a / (2 / 3)) + b * math.log(b / (1 / 3))  # both rows are alike
    expected = (row_kl + row_kl) / 2
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert pkt_loss(s, t, eps=0.0).item() == pytest.approx(expected, rel=1e-5)
    assert pkt_loss(s, t).item() == pytest.approx(expected, rel=1e-4)  # default eps 1e-7


def test_hand_value_antipodal_teacher_pair():
    # student: three orthogonal unit vectors -> every row (.5, .25, .25) up to order
    # teacher: t0 = -t1 (K = 0), t2 orthogonal to both (K = .5)
    #   rows: (2/3, 0, 1/3), (0, 2/3, 1/3), (1/4, 1/4, 1/2)
    s = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 5.0]])  # norms don't matter
    t = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    row0 = (2 / 3) * math.log((2 / 3) / 0.5) + 0.0 + (1 / 3) * math.log((1 / 3) / 0.25)
    row1 = row0
    row2 = 0.25 * math.log(0.25 / 0.25) + 0.25 * math.log(0.25 / 0.25) + 0.5 * math.log(0.5 / 0.5)
    expected = (row0 + row1 + row2) / 3
    got = pkt_loss(s, t, eps=0.0)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def _outputs(feat, path):
    return Outputs(logits=torch.zeros(feat.shape[0], 3), features={path: feat})


def test_module_flattens_the_features():
    torch.manual_seed(0)
    f_s, f_t = torch.randn(6, 3, 2, 2), torch.randn(6, 10)
    term = PKT("s.layer", "t.layer")
    assert list(term.parameters()) == []
    loss = term(_outputs(f_s, "s.layer"), _outputs(f_t, "t.layer"), None)
    assert loss.item() > 0
    assert loss.item() == pytest.approx(pkt_loss(f_s.flatten(1), f_t).item())


def test_scale_free():
    torch.manual_seed(1)
    e = torch.randn(5, 7)
    assert pkt_loss(4.0 * e, e).item() == pytest.approx(0.0, abs=1e-6)


def test_zero_feature_row_is_finite():
    s = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, -1.0]], requires_grad=True)
    t = torch.tensor([[1.0, 1.0], [0.0, 0.0], [2.0, 0.5]])
    loss = pkt_loss(s, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_bad_values():
    with pytest.raises(ValueError, match="eps must be >= 0"):
        pkt_loss(torch.randn(2, 3), torch.randn(2, 3), eps=-1.0)
    with pytest.raises(ValueError, match="differ in size"):
        pkt_loss(torch.randn(2, 3), torch.randn(3, 3))
