"""FitNet hint loss: hand-worked MSE values and the generic loss-term checks."""

import pytest
import torch

from distill.distiller import Outputs
from distill.losses.fitnet import FitNet, fitnet_loss


def outs(**features):
    return Outputs(torch.zeros(next(iter(features.values())).size(0), 3), features)


def batch_of(n):
    return (torch.zeros(n, 1), torch.full((n,), -1), torch.arange(n))


def built(s_shape, t_shape):
    term = FitNet("s", "t")
    term.setup({"s": s_shape}, {"t": t_shape})
    return term


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
    term = built((2, 2), (2, 2))
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    t = torch.tensor([[0.0, 2.0], [3.0, 6.0]])
    assert list(term.parameters()) == []  # equal shapes: no projector
    assert term(outs(s=s), outs(t=t), batch_of(2)).item() == pytest.approx(1.25)


def test_finite_scalar_fp32_and_gradients():
    torch.manual_seed(0)
    term = built((4, 3, 4, 4), (4, 5, 2, 2))
    s = torch.randn(4, 3, 4, 4, dtype=torch.bfloat16, requires_grad=True)
    t = torch.randn(4, 5, 2, 2, requires_grad=True)
    loss = term(outs(s=s), outs(t=t), batch_of(4))
    assert loss.dim() == 0 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    params = list(term.parameters())
    assert params and all(p.grad is not None for p in params)
    assert t.grad is None


def test_zero_when_equal():
    f = torch.randn(3, 4, 2, 2)
    assert fitnet_loss(f, f.clone()).item() == 0.0
    term = built(f.shape, f.shape)
    assert term(outs(s=f), outs(t=f.clone()), batch_of(3)).item() == 0.0


def test_repeating_the_batch_keeps_the_value():
    torch.manual_seed(1)
    term = built((3, 2, 4, 4), (3, 6, 4, 4))
    s, t = torch.randn(3, 2, 4, 4), torch.randn(3, 6, 4, 4)
    once = term(outs(s=s), outs(t=t), batch_of(3))
    twice = term(outs(s=torch.cat([s, s])), outs(t=torch.cat([t, t])), batch_of(6))
    assert twice.item() == pytest.approx(once.item(), rel=1e-5)


def test_layers_and_errors():
    term = FitNet("layer2", "layer3")
    assert term.student_layers == ["layer2"] and term.teacher_layers == ["layer3"]
    with pytest.raises(RuntimeError, match="setup"):
        term(outs(layer2=torch.ones(1, 2)), outs(layer3=torch.ones(1, 2)), batch_of(1))
    with pytest.raises(ValueError, match="module path"):
        FitNet("", "layer3")
    with pytest.raises(ValueError, match="equal shapes"):
        fitnet_loss(torch.ones(2, 3), torch.ones(2, 4))
