"""Variational information distillation: hand-worked likelihoods and the known minimum
(generic checks: test_registry.py)."""

import math

import pytest
import torch

from distill.distiller import Outputs
from distill.losses.vid import VID, vid_loss


def test_hand_value_pure_function():
    # one sample, 2 channels, 1x2 map; mean = 0
    # alpha_0 = 0 -> var_0 = ln 2 + eps
    # alpha_1 = ln(e - 1) -> var_1 = ln(1 + e - 1) + eps = 1 + eps
    eps = 1e-5
    v0, v1 = math.log(2) + eps, 1 + eps
    t = torch.tensor([[[[1.0, 2.0]], [[0.0, -1.0]]]])
    mean = torch.zeros_like(t)
    alpha = torch.tensor([0.0, math.log(math.e - 1)])
    terms = [
        0.5 * (1.0 / v0 + math.log(v0)),
        0.5 * (4.0 / v0 + math.log(v0)),
        0.5 * (0.0 / v1 + math.log(v1)),
        0.5 * (1.0 / v1 + math.log(v1)),
    ]
    expected = sum(terms) / 4
    got = vid_loss(mean, alpha, t, eps)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def _outputs(feat, path):
    return Outputs(logits=torch.zeros(feat.shape[0], 3), features={path: feat})


def _identity_vid(channels, **kwargs):
    term = VID("s", "t", **kwargs)
    term.setup({"s": (1, channels, 1, 1)}, {"t": (1, channels, 1, 1)})
    with torch.no_grad():
        for layer in term.mu_net:
            if isinstance(layer, torch.nn.Conv2d):
                layer.weight.copy_(torch.eye(channels).reshape(channels, channels, 1, 1))
    return term


def test_hand_value_module_identity_mean_net_and_init_var():
    # mu_net = identity on positive inputs; var = init_var = 5 exactly on every channel
    term = _identity_vid(2)
    s = torch.tensor([[1.0, 3.0]]).reshape(1, 2, 1, 1)
    t = torch.tensor([[2.0, 0.0]]).reshape(1, 2, 1, 1)
    expected = (0.5 * ((2 - 1) ** 2 / 5 + math.log(5)) + 0.5 * ((0 - 3) ** 2 / 5 + math.log(5))) / 2
    got = term(_outputs(s, "s"), _outputs(t, "t"), None)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.5 + 0.5 * math.log(5))


def test_hand_value_student_map_pooled_to_teacher_size():
    # student 1 channel 2x2 -> average-pooled to the teacher's 1x1 before mu_net
    term = VID("s", "t", init_var=2.0)
    term.setup({"s": (1, 1, 2, 2)}, {"t": (1, 1, 1, 1)})
    with torch.no_grad():
        for layer in term.mu_net:
            if isinstance(layer, torch.nn.Conv2d):
                layer.weight.fill_(1.0)
    s = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]]]])  # mean 3
    t = torch.tensor([[[[5.0]]]])
    expected = 0.5 * ((5.0 - 3.0) ** 2 / 2.0 + math.log(2.0))
    got = term(_outputs(s, "s"), _outputs(t, "t"), None)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_known_minimum_when_student_equals_teacher():
    # perfect mean: only 0.5 * log var remains (not 0: the log 2pi constant is dropped too)
    term = _identity_vid(3)
    x = torch.rand(4, 3, 1, 1) + 0.1
    got = term(_outputs(x, "s"), _outputs(x.clone(), "t"), None)
    assert got.item() == pytest.approx(0.5 * math.log(5.0), rel=1e-5)
    t = torch.randn(2, 3, 2, 2)
    zero_alpha = torch.zeros(3)
    assert vid_loss(t, zero_alpha, t, 0.0).item() == pytest.approx(0.5 * math.log(math.log(2)))


def test_setup_sizes_the_mean_network_and_starts_at_init_var():
    term = VID("layer1", "layer2")
    term.setup({"layer1": (3, 4, 4, 4)}, {"layer2": (3, 6, 2, 2)})
    convs = [m for m in term.mu_net if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(4, 6), (6, 6), (6, 6)]
    assert all(c.bias is None for c in convs)
    softplus = torch.nn.functional.softplus(term.alpha) + term.eps
    assert torch.allclose(softplus, torch.full((6,), 5.0))


def test_vector_features_are_one_by_one_maps():
    # (N, D) features go through the same mean network as (N, D, 1, 1) maps
    torch.manual_seed(1)
    term = VID("s", "t")
    term.setup({"s": (4, 5)}, {"t": (4, 3)})
    s, t = torch.randn(4, 5), torch.randn(4, 3)
    vectors = term(_outputs(s, "s"), _outputs(t, "t"), None)
    maps = term(_outputs(s[:, :, None, None], "s"), _outputs(t[:, :, None, None], "t"), None)
    assert torch.isfinite(vectors) and vectors.item() == pytest.approx(maps.item(), rel=1e-6)


def test_setup_errors():
    term = VID("s", "t")
    with pytest.raises(ValueError, match="4-D maps"):
        term.setup({"s": (2, 3, 4, 4)}, {"t": (2, 3)})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"eps": 0.0}, "eps must be > 0"),
        ({"init_var": 0.0}, "init_var must be > eps"),
        ({"init_var": -1.0}, "init_var must be > eps"),
    ],
)
def test_bad_hyper_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VID("a", "b", **kwargs)
