"""Tutorial regressor MSE: hand-set 3x3 regressors (generic checks: test_registry.py)."""

import pytest
import torch
from loss_helpers import batch_of, built, outs

from distill.losses.regressor import Regressor, regressor_loss


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
    term = built(Regressor, (1, 1, 1, 1), (1, 1, 1, 1))
    conv = term.regressor[-1]
    assert conv.kernel_size == (3, 3) and conv.padding == (1, 1)
    set_center(conv, 1.0, 0.0)  # regressed = 2
    s, t = torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), 5.0)
    assert term(outs(s=s), outs(t=t), batch_of(1)).item() == pytest.approx((2 - 5) ** 2)


def test_hand_value_module_pools_the_student_to_the_teacher_size():
    term = built(Regressor, (1, 1, 2, 2), (1, 2, 1, 1))
    set_center(term.regressor[-1], 2.0, 1.0)
    s = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2)  # pooled to 2.5
    t = torch.tensor([5.0, 8.0]).reshape(1, 2, 1, 1)
    out = 2.0 * 2.5 + 1.0  # both output channels: 6
    expected = ((out - 5) ** 2 + (out - 8) ** 2) / 2
    assert term(outs(s=s), outs(t=t), batch_of(1)).item() == pytest.approx(expected)


def test_regressor_present_even_for_equal_shapes():
    term = built(Regressor, (4, 3, 4, 4), (4, 3, 4, 4))
    assert [type(m) for m in term.regressor] == [torch.nn.Conv2d]  # no pooling needed
    assert len(list(term.parameters())) == 2  # weight and bias


def test_zero_with_an_identity_regressor():
    # (the registry's zero check skips Regressor: its regressor starts random)
    f = torch.randn(3, 4, 5, 5)
    assert regressor_loss(f, f.clone()).item() == 0.0
    term = built(Regressor, f.shape, f.shape)
    with torch.no_grad():  # identity regressor: centre tap 1 on the matching channel
        conv = term.regressor[-1]
        conv.weight.zero_()
        conv.weight[range(4), range(4), 1, 1] = 1.0
        conv.bias.zero_()
    assert term(outs(s=f), outs(t=f.clone()), batch_of(3)).item() == pytest.approx(0.0, abs=1e-12)


def test_shape_errors():
    term = Regressor("features", "features")
    with pytest.raises(ValueError, match="4-D"):
        term.setup({"features": (1, 8)}, {"features": (1, 8)})
    with pytest.raises(ValueError, match="equal shapes"):
        regressor_loss(torch.ones(1, 2, 2, 2), torch.ones(1, 3, 2, 2))
