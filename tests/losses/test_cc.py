"""Correlation congruence: hand-worked kernel matrices (generic checks: test_registry.py)."""

import math

import pytest
import torch
from torch import nn

from distill.distiller import Outputs
from distill.losses.cc import CC, cc_loss

S2 = [[1.0, 0.0], [0.0, 1.0]]
T2 = [[1.0, 0.0], [1.0, 1.0]]


def hand_case_1():
    # gamma = .4, P = 2: k(sim) = e^-0.8 * (1 + 0.8 sim + 0.32 sim^2); diagonals agree (sim = 1)
    # student off-diagonal sim = 0, teacher off-diagonal sim = 1/sqrt2
    k_s = math.exp(-0.8) * 1.0
    k_t = math.exp(-0.8) * (1 + 0.8 / math.sqrt(2) + 0.32 * 0.5)
    return 2 * (k_s - k_t) ** 2 / 4


def test_hand_value_paper_defaults():
    got = cc_loss(torch.tensor(S2), torch.tensor(T2))
    assert got.item() == pytest.approx(hand_case_1(), rel=1e-5)


def test_hand_value_first_order_three_samples():
    # gamma = .5, P = 1: k(sim) = e^-1 * (1 + sim)
    # student (unnormalized on purpose): sims s01 = 0, s02 = -1, s12 = 0
    # teacher: t01 = 1, t02 = 0, t12 = 0
    s = torch.tensor([[3.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    d01 = math.exp(-1) * ((1 + 0) - (1 + 1))
    d02 = math.exp(-1) * ((1 - 1) - (1 + 0))
    d12 = 0.0
    expected = 2 * (d01**2 + d02**2 + d12**2) / 9
    assert cc_loss(s, t, gamma=0.5, order=1).item() == pytest.approx(expected, rel=1e-5)


def test_third_order_series_term():
    # order 3 adds (2 gamma)^3 / 3! * sim^3 to the teacher's off-diagonal entry
    c = 1 / math.sqrt(2)
    k_s = math.exp(-0.8)
    k_t = math.exp(-0.8) * (1 + 0.8 * c + 0.64 / 2 * c**2 + 0.512 / 6 * c**3)
    expected = 2 * (k_s - k_t) ** 2 / 4
    got = cc_loss(torch.tensor(S2), torch.tensor(T2), gamma=0.4, order=3)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def _outputs(feat, path):
    return Outputs(logits=torch.zeros(feat.shape[0], 3), features={path: feat})


def test_module_with_set_embedding_matches_hand_value():
    term = CC("s", "t")
    term.setup({"s": (2, 3)}, {"t": (2, 2)})
    assert isinstance(term.embed, nn.Linear)
    with torch.no_grad():  # keep the first two coordinates
        term.embed.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        term.embed.bias.zero_()
    f_s = torch.tensor([[1.0, 0.0, 9.0], [0.0, 1.0, -4.0]])
    loss = term(_outputs(f_s, "s"), _outputs(torch.tensor(T2), "t"), None)
    assert loss.item() == pytest.approx(hand_case_1(), rel=1e-5)


def test_embedding_maps_the_flattened_widths():
    term = CC("layer1", "layer2")
    term.setup({"layer1": (6, 2, 3, 3)}, {"layer2": (6, 4, 2, 2)})
    assert isinstance(term.embed, nn.Linear) and term.embed.in_features == 18
    assert term.embed.out_features == 16


def test_same_width_needs_no_embedding():
    term = CC("a", "b")
    term.setup({"a": (4, 8)}, {"b": (4, 2, 2, 2)})
    assert isinstance(term.embed, nn.Identity)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"gamma": 0.0}, "gamma must be > 0"),
        ({"gamma": -1.0}, "gamma must be > 0"),
        ({"order": 0}, "order must be an integer >= 1"),
        ({"order": 1.5}, "order must be an integer >= 1"),
    ],
)
def test_bad_hyper_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CC("a", "b", **kwargs)
