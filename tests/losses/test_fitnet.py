"""FitNet hint loss: hand-worked MSE values (generic checks: test_registry.py)."""

import math

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


# ---------------------------------------------------------------- regressor="reference"


def _reference_parts(s_shape, t_shape):
    term = FitNet("s", "t", regressor="reference")
    term.setup({"s": s_shape}, {"t": t_shape})
    conv, bn, relu = term.projector
    assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == t_shape[1]
    assert isinstance(relu, nn.ReLU)
    assert conv.bias is not None  # the references' conv has a bias
    with torch.no_grad():
        out = term.projector(torch.randn(s_shape))
    assert out.shape == t_shape  # the rule gives the teacher's shape
    return conv


def test_reference_regressor_halves_with_a_stride_2_conv():
    conv = _reference_parts((2, 3, 8, 8), (2, 5, 4, 4))
    assert type(conv) is nn.Conv2d
    assert (conv.in_channels, conv.out_channels) == (3, 5)
    assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 3), (2, 2), (1, 1))


def test_reference_regressor_doubles_with_a_transposed_conv():
    conv = _reference_parts((2, 3, 4, 4), (2, 5, 8, 8))
    assert isinstance(conv, nn.ConvTranspose2d)
    assert (conv.kernel_size, conv.stride, conv.padding) == ((4, 4), (2, 2), (1, 1))


def test_reference_regressor_shrinks_other_sizes_with_a_valid_kernel():
    conv = _reference_parts((2, 3, 6, 5), (2, 5, 4, 4))
    assert type(conv) is nn.Conv2d
    assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 2), (1, 1), (0, 0))


def test_reference_regressor_is_built_for_equal_shapes_too():
    conv = _reference_parts((2, 4, 4, 4), (2, 4, 4, 4))
    assert type(conv) is nn.Conv2d and conv.kernel_size == (1, 1)


@pytest.mark.parametrize("s_shape, t_shape, match", [
    ((2, 3, 4, 4), (2, 5, 6, 6), "smaller"),  # larger teacher map, not twice the size
    ((2, 3), (2, 5), "4-D"),  # vectors: ConvReg is a convolution
])
def test_reference_regressor_refuses_shapes_it_has_no_rule_for(s_shape, t_shape, match):
    with pytest.raises(ValueError, match=match):
        FitNet("s", "t", regressor="reference").setup({"s": s_shape}, {"t": t_shape})


def test_unknown_regressor_is_an_error():
    with pytest.raises(ValueError, match="'linear' or 'reference'"):
        FitNet("s", "t", regressor="relu")


def _fixed_1x1(term, weight: float, bias: float | None):
    conv = term.projector[0] if not isinstance(term.projector[0], nn.AdaptiveAvgPool2d) else term.projector[1]
    with torch.no_grad():
        conv.weight.fill_(weight)
        if bias is not None:
            conv.bias.fill_(bias)


def test_reference_regressor_hand_value_with_fixed_weights():
    # One channel, 1x2 maps, two samples: student values 0, 1 | 2, 3. Conv 1x1 with weight 2
    # and bias 1 gives 1, 3, 5, 7; BatchNorm in training mode (batch mean 4, biased variance 5,
    # eps 1e-5, gamma 1, beta 0) gives (-3, -1, 1, 3) / sqrt(5 + 1e-5); ReLU zeroes the first
    # two. The teacher's map (-1, 0 | 0.5, 1) has a negative value the ReLU cannot reach.
    s = torch.tensor([0.0, 1.0, 2.0, 3.0]).reshape(2, 1, 1, 2)
    t = torch.tensor([-1.0, 0.0, 0.5, 1.0]).reshape(2, 1, 1, 2)
    r = math.sqrt(5 + 1e-5)
    teacher = [-1.0, 0.0, 0.5, 1.0]

    reference = FitNet("s", "t", regressor="reference")
    reference.setup({"s": (2, 1, 1, 2)}, {"t": (2, 1, 1, 2)})
    _fixed_1x1(reference, 2.0, 1.0)
    projected = [0.0, 0.0, 1 / r, 3 / r]
    expected = sum((p - q) ** 2 for p, q in zip(projected, teacher, strict=True)) / 4
    assert reference(outs(s=s), outs(t=t), batch_of(2)).item() == pytest.approx(expected, rel=1e-6)

    # the default (linear) regressor with the same conv weight: no ReLU, and with equal shapes
    # no projector at all, so give it two teacher channels to make it build one
    linear = FitNet("s", "t")
    linear.setup({"s": (2, 1, 1, 2)}, {"t": (2, 2, 1, 2)})
    _fixed_1x1(linear, 2.0, None)
    t2 = torch.cat([t, t], dim=1)
    projected = [-3 / r, -1 / r, 1 / r, 3 / r]
    expected = sum((p - q) ** 2 for p, q in zip(projected, teacher, strict=True)) / 4
    assert linear(outs(s=s), outs(t=t2), batch_of(2)).item() == pytest.approx(expected, rel=1e-6)


def test_regressor_is_a_config_key():
    from distill.config import load_config
    from distill.errors import ConfigError

    base = ["loss.hint.type=fitnet", "loss.hint.student=layer1", "loss.hint.teacher=layer1"]
    cfg = load_config(None, [*base, "loss.hint.regressor=reference"])
    assert cfg.loss["hint"]["regressor"] == "reference"
    with pytest.raises(ConfigError, match="reference"):
        load_config(None, [*base, "loss.hint.regressor=relu"])
