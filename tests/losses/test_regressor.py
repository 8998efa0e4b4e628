"""Tutorial regressor MSE: hand-set 3x3 regressors and the generic loss-term checks."""

import pytest
import torch

from distill.distiller import Outputs
from distill.losses.regressor import Regressor, regressor_loss


def outs(**features):
    return Outputs(torch.zeros(next(iter(features.values())).size(0), 3), features)


def batch_of(n):
    return (torch.zeros(n, 1), torch.full((n,), -1), torch.arange(n))


def built(s_shape, t_shape):
    term = Regressor("s", "t")
    term.setup({"s": s_shape}, {"t": t_shape})
    return term


def set_center(conv, weight, bias):
    """Only the kernel's centre tap is nonzero, so on a 1x1 map out = weight * in + bias."""
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, 1, 1] = weight
        conv.bias.fill_(bias)


def test_hand_value_pure_mse():
    regressed = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2)
    teacher = torch.tensor([2.0, 2.0, 0.0, 4.0]).reshape(1, 1, 2, 2)
    assert regressor_loss(regressed, teacher).item() == pytest.approx((1 + 0 + 9 + 0) / 4)


def test_hand_value_module_3x3_regressor():
    term = built((1, 1, 1, 1), (1, 1, 1, 1))
    conv = term.regressor[-1]
    assert conv.kernel_size == (3, 3) and conv.padding == (1, 1)
    set_center(conv, 1.0, 0.0)  # regressed = 2
    s, t = torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), 5.0)
    assert term(outs(s=s), outs(t=t), batch_of(1)).item() == pytest.approx((2 - 5) ** 2)


def test_hand_value_module_pools_the_student_to_the_teacher_size():
    term = built((1, 1, 2, 2), (1, 2, 1, 1))
    set_center(term.regressor[-1], 2.0, 1.0)
    s = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2)  # pooled to 2.5
    t = torch.tensor([5.0, 8.0]).reshape(1, 2, 1, 1)
    out = 2.0 * 2.5 + 1.0  # both output channels: 6
    expected = ((out - 5) ** 2 + (out - 8) ** 2) / 2
    assert term(outs(s=s), outs(t=t), batch_of(1)).item() == pytest.approx(expected)


def test_finite_scalar_fp32_and_gradients():
    torch.manual_seed(0)
    term = built((4, 3, 4, 4), (4, 5, 4, 4))
    s = torch.randn(4, 3, 4, 4, dtype=torch.bfloat16, requires_grad=True)
    t = torch.randn(4, 5, 4, 4, requires_grad=True)
    loss = term(outs(s=s), outs(t=t), batch_of(4))
    assert loss.dim() == 0 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    params = list(term.parameters())
    assert len(params) == 2 and all(p.grad is not None for p in params)
    assert t.grad is None


def test_zero_when_equal():
    f = torch.randn(3, 4, 5, 5)
    assert regressor_loss(f, f.clone()).item() == 0.0
    term = built(f.shape, f.shape)
    with torch.no_grad():  # identity regressor: centre tap 1 on the matching channel
        conv = term.regressor[-1]
        conv.weight.zero_()
        conv.weight[range(4), range(4), 1, 1] = 1.0
        conv.bias.zero_()
    assert term(outs(s=f), outs(t=f.clone()), batch_of(3)).item() == pytest.approx(0.0, abs=1e-12)


def test_repeating_the_batch_keeps_the_value():
    torch.manual_seed(1)
    term = built((3, 2, 4, 4), (3, 6, 2, 2))
    s, t = torch.randn(3, 2, 4, 4), torch.randn(3, 6, 2, 2)
    once = term(outs(s=s), outs(t=t), batch_of(3))
    twice = term(outs(s=torch.cat([s, s])), outs(t=torch.cat([t, t])), batch_of(6))
    assert twice.item() == pytest.approx(once.item(), rel=1e-6)


def test_layers_and_errors():
    term = Regressor("features", "features")
    assert term.student_layers == ["features"] and term.teacher_layers == ["features"]
    f = torch.ones(1, 2, 2, 2)
    with pytest.raises(RuntimeError, match="setup"):
        term(outs(features=f), outs(features=f), batch_of(1))
    with pytest.raises(ValueError, match="module path"):
        Regressor("features", "")
    with pytest.raises(ValueError, match="4-D"):
        term.setup({"features": (1, 8)}, {"features": (1, 8)})
    with pytest.raises(ValueError, match="equal shapes"):
        regressor_loss(torch.ones(1, 2, 2, 2), torch.ones(1, 3, 2, 2))
