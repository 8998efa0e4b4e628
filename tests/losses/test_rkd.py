"""Relational KD: hand-worked distance and angle potentials (generic checks: test_registry.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

from distill.distiller import Outputs
from distill.losses.rkd import RKD, rkd_angle, rkd_distance, rkd_loss


def huber(x):
    return 0.5 * x * x if abs(x) <= 1 else abs(x) - 0.5


def dist(a, b):
    return math.sqrt(sum((p - q) ** 2 for p, q in zip(a, b, strict=True)))


def hand_distance(s, t):
    """Paper form, plain Python: mean-normalized distances, Huber, mean over all B*B pairs."""
    n = len(s)

    def potentials(e):
        d = [[dist(e[i], e[j]) for j in range(n)] for i in range(n)]
        pos = [x for row in d for x in row if x > 0]
        mu = sum(pos) / len(pos)
        return [[x / mu for x in row] for row in d]

    ps, pt = potentials(s), potentials(t)
    return sum(huber(ps[i][j] - pt[i][j]) for i in range(n) for j in range(n)) / n**2


def hand_angle(s, t):
    """Paper form, plain Python: cosines of normalized difference vectors, mean over B^3."""
    n = len(s)

    def unit(a, b):  # (b - a) / |b - a|, zero vector if a == b
        v = [q - p for p, q in zip(a, b, strict=True)]
        r = math.sqrt(sum(x * x for x in v))
        return [x / r for x in v] if r > 0 else [0.0 for _ in v]

    def cosines(e):
        return [
            sum(x * y for x, y in zip(unit(e[i], e[j]), unit(e[i], e[k]), strict=True))
            for i in range(n)
            for j in range(n)
            for k in range(n)
        ]

    cs, ct = cosines(s), cosines(t)
    return sum(huber(a - b) for a, b in zip(cs, ct, strict=True)) / n**3


S3 = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
T3 = [[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]]


def test_distance_hand_value_explicit():
    # student distances 1, 1, sqrt2 ; teacher distances 2, 1, sqrt5 (each pair counted twice)
    mu_s = (1 + 1 + math.sqrt(2)) / 3
    mu_t = (2 + 1 + math.sqrt(5)) / 3
    diffs = [1 / mu_s - 2 / mu_t, 1 / mu_s - 1 / mu_t, math.sqrt(2) / mu_s - math.sqrt(5) / mu_t]
    expected = 2 * sum(0.5 * x * x for x in diffs) / 9  # all |x| < 1, diagonal contributes 0
    got = rkd_distance(torch.tensor(S3), torch.tensor(T3))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert got.item() == pytest.approx(hand_distance(S3, T3), rel=1e-5)


def test_angle_hand_value_explicit():
    # Student: right angle at point 0 (cos 0), 45 degrees at points 1 and 2 (cos 1/sqrt2).
    # Teacher: right angle at point 0, at point 1 cos = 2/sqrt5, at point 2 cos = 1/sqrt5.
    # For each vertex i the two distinct off-vertex orderings (j, k), (k, j) carry the cosine,
    # the two j == k triples carry 1 on both sides; other triples are degenerate (0 vs 0).
    r2, r5 = math.sqrt(2), math.sqrt(5)
    diffs = [0.0, 1 / r2 - 2 / r5, 1 / r2 - 1 / r5]
    expected = 2 * sum(0.5 * x * x for x in diffs) / 27
    got = rkd_angle(torch.tensor(S3), torch.tensor(T3))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert got.item() == pytest.approx(hand_angle(S3, T3), rel=1e-5)


def test_combined_hand_value_with_huber_linear_branch_and_duplicates():
    # 4 samples in 3-D, a duplicated teacher sample (degenerate pairs/triples), and a large
    # distance gap so that some Huber arguments exceed 1 (linear branch).
    s = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [10.0, 10.0, 10.0]]
    t = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 0.0, 2.0]]
    expected = 25.0 * hand_distance(s, t) + 50.0 * hand_angle(s, t)
    got = rkd_loss(torch.tensor(s), torch.tensor(t))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # weights are applied as given, a zero weight drops the term
    only_d = rkd_loss(torch.tensor(s), torch.tensor(t), distance_weight=1.0, angle_weight=0.0)
    assert only_d.item() == pytest.approx(hand_distance(s, t), rel=1e-5)


def _outputs(feat, path):
    return Outputs(logits=torch.zeros(feat.shape[0], 3), features={path: feat})


def test_module_flattens_conv_maps():
    torch.manual_seed(0)
    f_s, f_t = torch.randn(6, 4, 3, 3), torch.randn(6, 7, 2, 2)
    loss = RKD("layer1", "layer2")(_outputs(f_s, "layer1"), _outputs(f_t, "layer2"), None)
    expected = rkd_loss(f_s.flatten(1), f_t.flatten(1))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_invariant_to_scale_and_shift():
    torch.manual_seed(1)
    e = torch.randn(5, 8)
    # the potentials are invariant to scaling and translation of the embedding
    assert rkd_loss(3.0 * e + 1.0, e).item() == pytest.approx(0.0, abs=1e-5)


def test_finite_grad_with_duplicate_samples():
    torch.manual_seed(2)
    s, t = torch.randn(5, 6), torch.randn(5, 6)
    s2 = torch.cat([s, s]).requires_grad_(True)
    two = rkd_loss(s2, torch.cat([t, t]))
    two.backward()  # duplicated samples have zero distance: gradient must stay finite
    assert torch.isfinite(s2.grad).all()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"distance_weight": -1.0},
        {"angle_weight": -0.5},
        {"distance_weight": 0.0, "angle_weight": 0.0},
        {"distance_weight": float("nan")},
    ],
)
def test_bad_hyper_parameters(kwargs):
    with pytest.raises(ValueError, match=">= 0"):
        RKD("a", "b", **kwargs)


def test_chunked_distances_match_unchunked(monkeypatch):
    import distill.losses.rkd as rkd_module

    torch.manual_seed(5)
    s = torch.randn(9, 4, 2, requires_grad=True)
    t = torch.randn(9, 5)
    whole = rkd_loss(s, t)
    (g_whole,) = torch.autograd.grad(whole, s)
    monkeypatch.setattr(rkd_module, "_CDIST_CHUNK", 2 * 9 * 8)  # two rows per chunk
    chunked = rkd_loss(s, t)
    (g_chunked,) = torch.autograd.grad(chunked, s)
    assert chunked.item() == pytest.approx(whole.item(), rel=1e-6)
    assert torch.allclose(g_chunked, g_whole, atol=1e-6)


def _angle_reference_f64(s, t):
    """The angle loss in float64, from the normalized difference vectors (paper form)."""

    def cosines(x):
        u = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), dim=2)  # [i, j] = unit(x_j - x_i)
        return torch.bmm(u, u.transpose(1, 2))  # [i, j, k] = cos of the angle at vertex i

    return F.smooth_l1_loss(cosines(s), cosines(t))


def test_angle_is_accurate_in_float32_on_wide_offset_features():
    # 64 samples x 2048 dims with a large common offset. The law of cosines on distances,
    # (d_ij^2 + d_ik^2 - d_jk^2) / (2 d_ij d_ik), is off from float64 there by up to 7e-7
    # (value, relative) and 6e-6 (gradient, relative norm) on these seeds; the difference-vector
    # form stays below 7e-8 and 6e-7.
    worst_value = worst_grad = 0.0
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        s = torch.randn(64, 2048, generator=g) + 100.0
        t = torch.randn(64, 512, generator=g)
        s64 = s.double().requires_grad_()
        ref = _angle_reference_f64(s64, t.double())
        (g64,) = torch.autograd.grad(ref, s64)
        s32 = s.clone().requires_grad_()
        got = rkd_angle(s32, t)
        (g32,) = torch.autograd.grad(got, s32)
        worst_value = max(worst_value, abs(got.double() - ref).item() / ref.item())
        worst_grad = max(worst_grad, ((g32.double() - g64).norm() / g64.norm()).item())
    assert worst_value < 3e-7
    assert worst_grad < 1.5e-6


def test_angle_blocks_match_one_block(monkeypatch):
    import distill.losses.rkd as rkd_module

    torch.manual_seed(6)
    s = torch.randn(9, 4, 2, requires_grad=True)
    t = torch.randn(9, 5)
    whole = rkd_angle(s, t)
    (g_whole,) = torch.autograd.grad(whole, s)
    monkeypatch.setattr(rkd_module, "_ANGLE_CHUNK", 2 * 9 * 8)  # two vertices per block
    blocked = rkd_angle(s, t)
    (g_blocked,) = torch.autograd.grad(blocked, s)  # through the recomputed blocks
    assert blocked.item() == pytest.approx(whole.item(), rel=1e-6)
    assert torch.allclose(g_blocked, g_whole, atol=1e-7)
