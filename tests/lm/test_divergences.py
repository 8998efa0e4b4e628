"""Token-level divergences (distill.losses.lm) and the chunked token loss (distill.lm.chunked).

The divergences are checked against values worked out by hand from the papers' formulas
(p = teacher, q = student; every function takes (log q, log p) with bins on the last axis and
returns one value per row), then for properties every registered term must have. The chunked
loss is checked against a naive float64 autograd computation, across chunk sizes, with a
shared vocabulary slice and with an offline top-k teacher (k stored tokens + one rest bin).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.errors import ConfigError
from distill.lm.chunked import (
    CHUNK_ELEMENTS,
    TAIL_FLOOR,
    Head,
    TeacherRows,
    chunk_rows,
    log_rest,
    token_loss,
    token_sums,
    with_rest,
)
from distill.losses.lm import (
    TOKEN_LOSSES,
    forward_kl,
    generalized_jsd,
    resolve_token_loss,
    reverse_kl,
    skew_kl,
    skew_reverse_kl,
    total_variation,
)
from distill.losses.lm.forward_kl import ForwardKL
from distill.losses.lm.jsd import JSD
from distill.losses.lm.reverse_kl import ReverseKL
from distill.losses.lm.skew_kl import SkewKL
from distill.losses.lm.skew_rkl import SkewReverseKL
from distill.losses.lm.tv import TV

NAMES = sorted(TOKEN_LOSSES)
FRACTION = {"jsd": "beta", "skew_kl": "lam", "skew_rkl": "lam"}  # the terms with a mixing weight
# KL(q || p) is +inf where the teacher gives a token exactly 0 and the student does not.
INF_AT_TEACHER_ZERO = {"reverse_kl"}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def logp(*rows) -> torch.Tensor:
    """float64 log-probabilities of explicit distributions (log 0 = -inf)."""
    return torch.tensor(rows, dtype=torch.float64).log()


def make(name: str, T: float = 1.0, frac: float | None = None):
    cls = TOKEN_LOSSES[name]
    kwargs = {"T": T}
    if name in FRACTION and frac is not None:
        kwargs[FRACTION[name]] = frac
    return cls(**kwargs)


def random_pair(rows=32, bins=11, scale=3.0, dtype=torch.float64):
    """(student log q, teacher log p) of random, distinct distributions."""
    s = F.log_softmax(scale * torch.randn(rows, bins, dtype=dtype), -1)
    t = F.log_softmax(scale * torch.randn(rows, bins, dtype=dtype), -1)
    return s, t


def assert_values(got: torch.Tensor, expected: list[float], rel=1e-12):
    assert got.shape == (len(expected),)
    assert got.tolist() == pytest.approx(expected, rel=rel, abs=1e-15)


# ---------------------------------------------------------------- hand-worked values

# A: p = [0.5, 0.3, 0.2] (teacher), q = [0.25, 0.25, 0.5] (student)
P_A, Q_A = [0.5, 0.3, 0.2], [0.25, 0.25, 0.5]


def test_forward_kl_hand_values():
    # KL(p || q) = sum p log(p / q)
    a = 0.5 * math.log(0.5 / 0.25) + 0.3 * math.log(0.3 / 0.25) + 0.2 * math.log(0.2 / 0.5)
    # p = [0.7, 0.2, 0.1, 0.0], q = [0.4, 0.4, 0.1, 0.1]: the p = 0 bin contributes 0.
    b = 0.7 * math.log(0.7 / 0.4) + 0.2 * math.log(0.2 / 0.4) + 0.1 * math.log(0.1 / 0.1) + 0.0
    assert_values(forward_kl(logp(Q_A), logp(P_A)), [a])
    assert_values(forward_kl(logp([0.4, 0.4, 0.1, 0.1]), logp([0.7, 0.2, 0.1, 0.0])), [b])
    # Two rows at once: one value per row, in order.
    q2 = logp([0.25, 0.25, 0.5], [0.1, 0.1, 0.8])
    p2 = logp([0.5, 0.3, 0.2], [0.8, 0.1, 0.1])
    c = 0.8 * math.log(0.8 / 0.1) + 0.1 * math.log(0.1 / 0.1) + 0.1 * math.log(0.1 / 0.8)
    assert_values(forward_kl(q2, p2), [a, c])
    assert_values(ForwardKL()(q2, p2), [a, c])


def test_reverse_kl_hand_values():
    # KL(q || p) = sum q log(q / p)
    a = 0.25 * math.log(0.25 / 0.5) + 0.25 * math.log(0.25 / 0.3) + 0.5 * math.log(0.5 / 0.2)
    # q = [0.6, 0.4, 0.0], p = [0.2, 0.3, 0.5]: the q = 0 bin contributes 0.
    b = 0.6 * math.log(0.6 / 0.2) + 0.4 * math.log(0.4 / 0.3) + 0.0
    got = reverse_kl(logp(Q_A, [0.6, 0.4, 0.0]), logp(P_A, [0.2, 0.3, 0.5]))
    assert_values(got, [a, b])
    assert_values(ReverseKL()(logp(Q_A, [0.6, 0.4, 0.0]), logp(P_A, [0.2, 0.3, 0.5])), [a, b])
    # It is not the forward KL (the two differ on A).
    fwd = 0.5 * math.log(0.5 / 0.25) + 0.3 * math.log(0.3 / 0.25) + 0.2 * math.log(0.2 / 0.5)
    assert abs(got[0].item() - fwd) > 0.02


def test_jsd_hand_values():
    # M = beta p + (1 - beta) q; JSD = beta KL(p || M) + (1 - beta) KL(q || M)
    # beta = 0.5 on A: M = [0.375, 0.275, 0.35]
    half = 0.5 * (
        0.5 * math.log(0.5 / 0.375) + 0.3 * math.log(0.3 / 0.275) + 0.2 * math.log(0.2 / 0.35)
    ) + 0.5 * (
        0.25 * math.log(0.25 / 0.375) + 0.25 * math.log(0.25 / 0.275) + 0.5 * math.log(0.5 / 0.35)
    )
    # beta = 0.9 on A: M = [0.45 + 0.025, 0.27 + 0.025, 0.18 + 0.05] = [0.475, 0.295, 0.23]
    nine = 0.9 * (
        0.5 * math.log(0.5 / 0.475) + 0.3 * math.log(0.3 / 0.295) + 0.2 * math.log(0.2 / 0.23)
    ) + 0.1 * (
        0.25 * math.log(0.25 / 0.475) + 0.25 * math.log(0.25 / 0.295) + 0.5 * math.log(0.5 / 0.23)
    )
    assert_values(generalized_jsd(logp(Q_A), logp(P_A), 0.5), [half])
    assert_values(generalized_jsd(logp(Q_A), logp(P_A), 0.9), [nine])
    assert_values(JSD(beta=0.9)(logp(Q_A), logp(P_A)), [nine])
    assert_values(JSD()(logp(Q_A), logp(P_A)), [half])  # default beta = 0.5
    # Disjoint supports, p = [1, 0], q = [0, 1]: beta = 0.5 gives log 2 (the JSD's maximum);
    # beta = 0.1 gives M = [0.1, 0.9]: 0.1 * log(1 / 0.1) + 0.9 * log(1 / 0.9).
    disjoint_q, disjoint_p = logp([0.0, 1.0]), logp([1.0, 0.0])
    assert_values(generalized_jsd(disjoint_q, disjoint_p, 0.5), [math.log(2)])
    assert_values(
        generalized_jsd(disjoint_q, disjoint_p, 0.1), [0.1 * math.log(1 / 0.1) + 0.9 * math.log(1 / 0.9)]
    )


def test_skew_kl_hand_values():
    # SKL = KL(p || lam p + (1 - lam) q)
    # lam = 0.1 on A: mix = [0.05 + 0.225, 0.03 + 0.225, 0.02 + 0.45] = [0.275, 0.255, 0.47]
    a = 0.5 * math.log(0.5 / 0.275) + 0.3 * math.log(0.3 / 0.255) + 0.2 * math.log(0.2 / 0.47)
    # lam = 0.5 on A: mix = [0.375, 0.275, 0.35]
    b = 0.5 * math.log(0.5 / 0.375) + 0.3 * math.log(0.3 / 0.275) + 0.2 * math.log(0.2 / 0.35)
    assert_values(skew_kl(logp(Q_A), logp(P_A), 0.1), [a])
    assert_values(skew_kl(logp(Q_A), logp(P_A)), [a])  # default lam = 0.1
    assert_values(skew_kl(logp(Q_A), logp(P_A), 0.5), [b])
    assert_values(SkewKL(lam=0.5)(logp(Q_A), logp(P_A)), [b])
    # p = [1, 0], q = [0, 1], lam = 0.1: mix = [0.1, 0.9] -> log(1 / 0.1), the bound log(1/lam).
    assert_values(skew_kl(logp([0.0, 1.0]), logp([1.0, 0.0]), 0.1), [math.log(10)])


def test_skew_reverse_kl_hand_values():
    # SRKL = KL(q || lam q + (1 - lam) p)
    # lam = 0.1 on A: mix = [0.025 + 0.45, 0.025 + 0.27, 0.05 + 0.18] = [0.475, 0.295, 0.23]
    a = 0.25 * math.log(0.25 / 0.475) + 0.25 * math.log(0.25 / 0.295) + 0.5 * math.log(0.5 / 0.23)
    # lam = 0.5 on A: mix = [0.375, 0.275, 0.35]
    b = 0.25 * math.log(0.25 / 0.375) + 0.25 * math.log(0.25 / 0.275) + 0.5 * math.log(0.5 / 0.35)
    assert_values(skew_reverse_kl(logp(Q_A), logp(P_A), 0.1), [a])
    assert_values(skew_reverse_kl(logp(Q_A), logp(P_A)), [a])  # default lam = 0.1
    assert_values(skew_reverse_kl(logp(Q_A), logp(P_A), 0.5), [b])
    assert_values(SkewReverseKL(lam=0.1)(logp(Q_A), logp(P_A)), [a])
    # q = [1, 0], p = [0, 1], lam = 0.1: mix = [0.1, 0.9] -> log(1 / 0.1), finite although p = 0.
    assert_values(skew_reverse_kl(logp([1.0, 0.0]), logp([0.0, 1.0]), 0.1), [math.log(10)])


def test_total_variation_hand_values():
    # TV = 1/2 sum |p - q|
    a = 0.5 * (abs(0.5 - 0.25) + abs(0.3 - 0.25) + abs(0.2 - 0.5))  # = 0.3
    # p = [0.7, 0.2, 0.1, 0.0], q = [0.1, 0.5, 0.1, 0.3]
    b = 0.5 * (abs(0.7 - 0.1) + abs(0.2 - 0.5) + abs(0.1 - 0.1) + abs(0.0 - 0.3))  # = 0.6
    assert_values(total_variation(logp(Q_A), logp(P_A)), [a])
    assert_values(total_variation(logp([0.1, 0.5, 0.1, 0.3]), logp([0.7, 0.2, 0.1, 0.0])), [b])
    assert a == pytest.approx(0.3) and b == pytest.approx(0.6)
    assert_values(TV()(logp([0.0, 1.0]), logp([1.0, 0.0])), [1.0])  # disjoint: the maximum


# ---------------------------------------------------------------- registry and constructors


def test_registry_names_and_resolve():
    assert set(TOKEN_LOSSES) == {"forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_rkl", "tv", "uld"}
    assert resolve_token_loss("jsd") is JSD
    assert resolve_token_loss("distill.losses.lm.tv:TV") is TV
    with pytest.raises(ConfigError, match="forward_kl"):
        resolve_token_loss("forward_kll")


@pytest.mark.parametrize("name", NAMES)
def test_defaults_and_temperature_stored(name):
    term = make(name, T=2.5)
    assert term.T == 2.5
    assert isinstance(term.T, float)
    default = TOKEN_LOSSES[name]()
    assert default.T == 1.0
    if name == "jsd":
        assert default.beta == 0.5
    elif name in FRACTION:
        assert default.lam == 0.1


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("T", [0.0, -1.0, float("nan")])
def test_constructor_rejects_bad_temperature(name, T):
    with pytest.raises(ValueError, match="T must be > 0"):
        make(name, T=T)


@pytest.mark.parametrize("name", sorted(FRACTION))
@pytest.mark.parametrize("frac", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_constructor_rejects_fraction_outside_open_interval(name, frac):
    with pytest.raises(ValueError, match=FRACTION[name]):
        make(name, frac=frac)


@pytest.mark.parametrize("name", sorted(FRACTION))
def test_constructor_accepts_fraction_inside(name):
    term = make(name, frac=0.25)
    assert getattr(term, FRACTION[name]) == 0.25


# ---------------------------------------------------------------- properties of every term


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("frac", [None, 0.3])
def test_zero_when_student_equals_teacher(name, frac):
    s, _ = random_pair()
    value = make(name, frac=frac)(s, s.clone())
    assert value.shape == (s.shape[0],)
    assert value.abs().max().item() < 1e-12


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("frac", [None, 0.7])
def test_positive_on_distinct_random_rows(name, frac):
    s, t = random_pair()
    value = make(name, frac=frac)(s, t)
    assert value.shape == (s.shape[0],)
    assert torch.isfinite(value).all()
    assert (value > 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_forward_is_per_token(name):
    s, t = random_pair(rows=4)
    term = make(name)
    assert torch.equal(term(s, t), term.per_token(s, t))


@pytest.mark.parametrize("name", NAMES)
def test_leading_axes_kept(name):
    s, t = random_pair(rows=6)
    term = make(name)
    flat = term(s, t)
    shaped = term(s.view(2, 3, -1), t.view(2, 3, -1))
    assert shaped.shape == (2, 3)
    torch.testing.assert_close(shaped.reshape(-1), flat)


@pytest.mark.parametrize("name", NAMES)
def test_teacher_exact_zero_probability(name):
    """A teacher log-prob of -inf (probability exactly 0) with a finite student."""
    logits = 2 * torch.randn(8, 7, dtype=torch.float64)
    logits[:, 0] = -math.inf
    logits[::2, 4] = -math.inf
    t = F.log_softmax(logits, -1)
    assert torch.isneginf(t[:, 0]).all()
    s_logits = torch.randn(8, 7, dtype=torch.float64, requires_grad=True)
    value = make(name)(F.log_softmax(s_logits, -1), t)
    if name in INF_AT_TEACHER_ZERO:
        assert torch.isposinf(value).all()
        return
    assert torch.isfinite(value).all()
    assert (value > 0).all()
    (grad,) = torch.autograd.grad(value.sum(), s_logits)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_student_exact_zero_where_teacher_zero(name):
    """Both sides 0 on the same bin: that bin contributes nothing, whatever the term."""
    s3, t3 = logp([0.25, 0.25, 0.5]), logp([0.5, 0.3, 0.2])
    s4, t4 = logp([0.25, 0.25, 0.5, 0.0]), logp([0.5, 0.3, 0.2, 0.0])
    term = make(name)
    torch.testing.assert_close(term(s4, t4), term(s3, t3))


BOTH_ZERO = [2, 7]  # bins where both models give logit -inf (e.g. a banned or padding token)


def minus_inf_at(logits: torch.Tensor, bins) -> torch.Tensor:
    logits = logits.clone()
    logits[..., bins] = -math.inf
    return logits


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_minus_inf_in_both_models_gives_finite_gradients(name, dtype):
    """Logits of -inf at the same bins in both models: those bins contribute nothing to the
    value, and the gradient to either side stays finite (0 there), not NaN."""
    s_logits = minus_inf_at(2 * torch.randn(6, 9, dtype=dtype), BOTH_ZERO).requires_grad_()
    t_logits = minus_inf_at(2 * torch.randn(6, 9, dtype=dtype), BOTH_ZERO).requires_grad_()
    term = make(name)
    value = term(F.log_softmax(s_logits, -1), F.log_softmax(t_logits, -1))
    kept = [i for i in range(9) if i not in BOTH_ZERO]
    without = term(F.log_softmax(s_logits[:, kept], -1), F.log_softmax(t_logits[:, kept], -1))
    torch.testing.assert_close(value, without)
    g_s, g_t = torch.autograd.grad(value.sum(), [s_logits, t_logits])
    assert torch.isfinite(g_s).all() and torch.isfinite(g_t).all()
    assert (g_s[:, BOTH_ZERO] == 0).all() and (g_t[:, BOTH_ZERO] == 0).all()


def test_jsd_symmetric_at_half():
    s, t = random_pair()
    torch.testing.assert_close(generalized_jsd(s, t, 0.5), generalized_jsd(t, s, 0.5))
    # Not symmetric at other beta, but JSD_beta(q, p) = JSD_{1 - beta}(p, q).
    assert not torch.allclose(generalized_jsd(s, t, 0.2), generalized_jsd(t, s, 0.2))
    torch.testing.assert_close(generalized_jsd(s, t, 0.2), generalized_jsd(t, s, 0.8))


def test_jsd_limits_are_forward_and_reverse_kl():
    s, t = random_pair(scale=1.5)
    small = 1e-5
    torch.testing.assert_close(generalized_jsd(s, t, small) / small, forward_kl(s, t), rtol=1e-2, atol=0)
    torch.testing.assert_close(
        generalized_jsd(s, t, 1 - small) / small, reverse_kl(s, t), rtol=1e-2, atol=0
    )


def test_skew_limits_are_forward_and_reverse_kl():
    s, t = random_pair(scale=1.5)
    torch.testing.assert_close(skew_kl(s, t, 1e-5), forward_kl(s, t), rtol=1e-2, atol=0)
    torch.testing.assert_close(skew_reverse_kl(s, t, 1e-5), reverse_kl(s, t), rtol=1e-2, atol=0)
    # ... and a sizeable lam is not the plain KL.
    assert (skew_kl(s, t, 0.5) < 0.9 * forward_kl(s, t)).all()


def test_skew_kl_bounded_by_log_inverse_lambda():
    # A student that puts almost no mass where the teacher's mass is.
    t = logp([0.9, 0.1 - 1e-12, 1e-12])
    s = logp([1e-30, 1e-30, 1 - 2e-30])
    assert forward_kl(s, t).item() > 50
    for lam in (0.1, 0.3):
        value = skew_kl(s, t, lam).item()
        assert value <= math.log(1 / lam) + 1e-12
        assert value > 0.9 * math.log(1 / lam)


def test_skew_at_half_sum_to_twice_jsd():
    # lam = 0.5: both mixtures are M = (p + q) / 2, so SKL + SRKL = KL(p||M) + KL(q||M) = 2 JSD.
    s, t = random_pair()
    torch.testing.assert_close(skew_kl(s, t, 0.5) + skew_reverse_kl(s, t, 0.5), 2 * generalized_jsd(s, t, 0.5))


def test_tv_in_unit_interval_and_symmetric():
    s, t = random_pair(rows=64, scale=5.0)
    tv = total_variation(s, t)
    assert ((tv > 0) & (tv <= 1)).all()
    torch.testing.assert_close(tv, total_variation(t, s))
    # Pinsker: TV <= sqrt(KL / 2), a bound the hand formula must respect.
    assert (tv <= torch.sqrt(forward_kl(s, t) / 2) + 1e-12).all()


# ---------------------------------------------------------------- chunked loss: helpers

M, H, V = 7, 5, 10  # counted rows, student hidden size, student vocabulary


def student(bias=True, rows=M, vocab=V):
    h = torch.randn(rows, H, requires_grad=True)
    w = (0.7 * torch.randn(vocab, H)).requires_grad_()
    b = (0.3 * torch.randn(vocab)).requires_grad_() if bias else None
    targets = torch.randint(vocab, (rows,))
    return h, w, b, targets


def online_teacher(rows=M, vocab=V, hidden=6):
    return TeacherRows(
        hidden=torch.randn(rows, hidden),
        head=Head(0.8 * torch.randn(vocab, hidden), 0.2 * torch.randn(vocab)),
    )


def leaves(h, w, b):
    return [h, w] + ([b] if b is not None else [])


def run_chunked(h, w, b, targets, chunk, **kwargs):
    """(loss, sums, grads) of token_loss, from fresh copies of the student's leaves."""
    xs = [x.detach().clone().requires_grad_() for x in leaves(h, w, b)]
    hh, ww, bb = xs[0], xs[1], (xs[2] if b is not None else None)
    loss, sums = token_loss(hh, Head(ww, bb), targets, chunk=chunk, **kwargs)
    loss.backward()
    return loss.detach(), sums, [x.grad for x in xs]


def naive_rest(logp_k):
    """log(1 - sum exp) of float64 top-k log-probabilities (no floor needed in these tests)."""
    return torch.log1p(-logp_k.exp().sum(-1, keepdim=True))


def run_naive(h, w, b, targets, *, count, terms=None, weights=None, teacher=None, vocab=None):
    """The plain float64 computation: whole logits, log_softmax at T, CE with reduction sum."""
    terms = terms or {}
    weights = weights if weights is not None else {"ce": 1.0}
    xs = [x.detach().double().requires_grad_() for x in leaves(h, w, b)]
    hh, ww, bb = xs[0], xs[1], (xs[2] if b is not None else None)
    logits = F.linear(hh, ww, bb)
    sums = {
        "ce": F.cross_entropy(logits, targets, reduction="sum"),
        "correct": (logits.argmax(-1) == targets).sum().double(),
    }
    s_logits = logits[:, :vocab] if vocab else logits
    if teacher is not None and teacher.hidden is not None:
        t_logits = F.linear(teacher.hidden.double(), teacher.head.weight.double(),
                            teacher.head.bias.double() if teacher.head.bias is not None else None)
        t_logits = t_logits[:, :vocab] if vocab else t_logits
    for name, term in terms.items():
        s = F.log_softmax(s_logits / term.T, -1)
        if teacher.hidden is not None:
            t = F.log_softmax(t_logits / term.T, -1)
        else:
            s_k = s.gather(1, teacher.topk_ids.long())
            s = torch.cat([s_k, naive_rest(s_k)], -1)
            t_k = teacher.topk_logp.double()
            t = torch.cat([t_k, naive_rest(t_k)], -1)
        sums[name] = term.per_token(s, t).sum()
    loss = sum(weights[k] * v for k, v in sums.items() if k in weights) / count
    grads = torch.autograd.grad(loss, xs)
    return loss.detach(), {k: v.detach() for k, v in sums.items()}, list(grads)


def assert_matches_naive(chunked, naive, names):
    loss, sums, grads = chunked
    n_loss, n_sums, n_grads = naive
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), n_loss, rtol=1e-5, atol=1e-6)
    for k in ["ce", "correct", *names]:
        torch.testing.assert_close(sums[k].double(), n_sums[k], rtol=1e-5, atol=1e-5)
    assert len(grads) == len(n_grads)
    for g, n in zip(grads, n_grads, strict=True):
        assert g is not None and g.shape == n.shape
        torch.testing.assert_close(g.double(), n, rtol=1e-4, atol=1e-6)


def assert_same_across_chunks(results):
    (loss0, sums0, grads0), *rest = results
    for loss, sums, grads in rest:
        torch.testing.assert_close(loss, loss0)
        assert sums.keys() == sums0.keys()
        for k in sums0:
            torch.testing.assert_close(sums[k], sums0[k])
        for g, g0 in zip(grads, grads0, strict=True):
            torch.testing.assert_close(g, g0)


# ---------------------------------------------------------------- chunked loss: online


def test_chunk_rows():
    assert chunk_rows(V, 3) == 3
    assert chunk_rows(V) == CHUNK_ELEMENTS // V
    assert chunk_rows(CHUNK_ELEMENTS * 4) == 1  # never 0 rows, however large the vocabulary


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("T", [1.0, 2.0])
@pytest.mark.parametrize("bias", [True, False])
def test_online_term_matches_naive_for_every_chunk_size(name, T, bias):
    h, w, b, targets = student(bias=bias)
    teacher = online_teacher()
    terms = {name: make(name, T=T, frac=0.3)}
    weights = {"ce": 0.5, name: 2.0}
    count = 10  # the accumulated batch's count, not this micro-batch's M = 7
    naive = run_naive(h, w, b, targets, count=count, terms=terms, weights=weights, teacher=teacher)
    results = [
        run_chunked(h, w, b, targets, chunk, count=count, terms=terms, weights=weights, teacher=teacher)
        for chunk in (1, 3, None)
    ]
    for result in results:
        assert_matches_naive(result, naive, [name])
    assert_same_across_chunks(results)
    # The divergence takes part: the loss is not the CE alone.
    assert abs(naive[1][name].item()) > 1e-3


def test_all_terms_at_once_with_mixed_temperatures():
    h, w, b, targets = student()
    teacher = online_teacher()
    temps = {"forward_kl": 1.0, "reverse_kl": 2.0, "jsd": 1.0, "skew_kl": 0.5, "skew_rkl": 2.0, "tv": 1.0,
             "uld": 2.0}
    terms = {name: make(name, T=temps[name]) for name in NAMES}
    weights = {"ce": 1.0, **{name: 0.1 * (i + 1) for i, name in enumerate(NAMES)}}
    naive = run_naive(h, w, b, targets, count=M, terms=terms, weights=weights, teacher=teacher)
    results = [
        run_chunked(h, w, b, targets, chunk, count=M, terms=terms, weights=weights, teacher=teacher)
        for chunk in (1, 3, None)
    ]
    for result in results:
        assert_matches_naive(result, naive, NAMES)
        assert set(result[1]) == {"ce", "correct", *NAMES}
    assert_same_across_chunks(results)


def test_unweighted_term_is_summed_but_not_in_loss():
    h, w, b, targets = student()
    teacher = online_teacher()
    terms = {"forward_kl": ForwardKL()}
    loss, sums, _ = run_chunked(h, w, b, targets, 3, count=M, terms=terms, weights={"ce": 1.0},
                                teacher=teacher)
    ce_only = run_naive(h, w, b, targets, count=M)
    torch.testing.assert_close(loss.double(), ce_only[0], rtol=1e-5, atol=1e-6)
    assert sums["forward_kl"].item() > 0


def test_default_weights_give_mean_cross_entropy():
    h, w, b, targets = student()
    loss, sums = token_loss(h, Head(w, b), targets, count=M)
    expected = F.cross_entropy(F.linear(h.double(), w.double(), b.double()), targets)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(sums) == {"ce", "correct"}


def test_backward_scales_by_incoming_gradient():
    h, w, b, targets = student()
    teacher = online_teacher()
    terms = {"jsd": JSD()}
    weights = {"ce": 1.0, "jsd": 1.0}
    _, _, grads = run_chunked(h, w, b, targets, 3, count=M, terms=terms, weights=weights, teacher=teacher)
    hh, ww, bb = (x.detach().clone().requires_grad_() for x in (h, w, b))
    loss, _ = token_loss(hh, Head(ww, bb), targets, count=M, terms=terms, weights=weights,
                         teacher=teacher, chunk=3)
    (3 * loss).backward()
    for x, g in zip((hh, ww, bb), grads, strict=True):
        torch.testing.assert_close(x.grad, 3 * g)


@pytest.mark.parametrize("name", NAMES)
def test_vocab_slice_restricts_divergence_not_ce(name):
    shared = 8
    h, w, b, targets = student()  # student vocabulary 10
    targets[0] = V - 1  # a target outside the shared slice: CE must still see it
    teacher = online_teacher(vocab=12)  # teacher vocabulary 12; the first 8 are shared
    terms = {name: make(name, T=1.5)}
    weights = {"ce": 1.0, name: 1.0}
    kwargs = {"count": M, "terms": terms, "weights": weights, "teacher": teacher, "vocab": shared}
    naive = run_naive(h, w, b, targets, **kwargs)
    results = [run_chunked(h, w, b, targets, chunk, **kwargs) for chunk in (1, 3, None)]
    for result in results:
        assert_matches_naive(result, naive, [name])
    assert_same_across_chunks(results)
    # The slice matters: CE over the whole vocabulary differs from CE over the shared slice,
    # and the student's logits past the slice get gradient from the CE alone.
    full_ce = F.cross_entropy(F.linear(h.double(), w.double(), b.double()), targets, reduction="sum")
    torch.testing.assert_close(results[0][1]["ce"].double(), full_ce, rtol=1e-5, atol=1e-5)
    ce_only = run_naive(h, w, b, targets, count=M)
    torch.testing.assert_close(results[0][2][1][shared:].double(), ce_only[2][1][shared:],
                               rtol=1e-4, atol=1e-6)
    assert not torch.allclose(results[0][2][1][:shared].double(), ce_only[2][1][:shared], atol=1e-4)


# ---------------------------------------------------------------- chunked loss: offline top-k


def test_log_rest_and_with_rest_hand_values():
    # Row 0: stored mass 0.8, rest 0.2. Row 1: stored mass exactly 1, rest floored at 1e-9.
    # Row 2: stored mass 1.2 > 1 (rounding in a real store): floored, never NaN.
    top = logp([0.5, 0.3], [0.6, 0.4], [0.7, 0.5])
    rest = log_rest(top)
    assert rest.shape == (3,)
    assert rest[0].item() == pytest.approx(math.log(0.2), rel=1e-12)
    assert rest[1].item() == pytest.approx(math.log(TAIL_FLOOR), rel=1e-12)
    assert rest[2].item() == pytest.approx(math.log(1e-9), rel=1e-12)
    full = with_rest(top)
    assert full.shape == (3, 3)
    assert torch.equal(full[:, :2], top)
    assert torch.equal(full[:, 2], rest)
    assert full.exp()[0].tolist() == pytest.approx([0.5, 0.3, 0.2], rel=1e-12)


def identity_student(q_rows):
    """A head that is the identity, so the hidden states are the student's logits (log q)."""
    logits = logp(*q_rows).float()
    vocab = logits.shape[1]
    h = logits.clone().requires_grad_()
    w = torch.eye(vocab).requires_grad_()
    return h, w


def test_offline_topk_hand_values():
    # Student q over V = 4; teacher stores k = 2 tokens per row.
    # Row 0: q = [0.4, 0.3, 0.2, 0.1]; ids [2, 0], p = [0.5, 0.3]
    #   bins (id 2, id 0, rest): q -> [0.2, 0.4, 0.4], p -> [0.5, 0.3, 0.2]
    # Row 1: q = [0.1, 0.1, 0.6, 0.2]; ids [3, 2], p = [0.7, 0.25]
    #   bins (id 3, id 2, rest): q -> [0.2, 0.6, 0.2], p -> [0.7, 0.25, 0.05]
    h, w = identity_student([[0.4, 0.3, 0.2, 0.1], [0.1, 0.1, 0.6, 0.2]])
    teacher = TeacherRows(topk_logp=logp([0.5, 0.3], [0.7, 0.25]).float(),
                          topk_ids=torch.tensor([[2, 0], [3, 2]]))
    targets = torch.tensor([0, 2])
    fkl = (0.5 * math.log(0.5 / 0.2) + 0.3 * math.log(0.3 / 0.4) + 0.2 * math.log(0.2 / 0.4)
           + 0.7 * math.log(0.7 / 0.2) + 0.25 * math.log(0.25 / 0.6) + 0.05 * math.log(0.05 / 0.2))
    rkl = (0.2 * math.log(0.2 / 0.5) + 0.4 * math.log(0.4 / 0.3) + 0.4 * math.log(0.4 / 0.2)
           + 0.2 * math.log(0.2 / 0.7) + 0.6 * math.log(0.6 / 0.25) + 0.2 * math.log(0.2 / 0.05))
    tv = 0.5 * (0.3 + 0.1 + 0.2) + 0.5 * (0.5 + 0.35 + 0.15)  # 0.3 + 0.5
    # JSD at beta = 0.5; mixtures: row 0 [0.35, 0.35, 0.3], row 1 [0.45, 0.425, 0.125]
    jsd = 0.5 * (0.5 * math.log(0.5 / 0.35) + 0.3 * math.log(0.3 / 0.35) + 0.2 * math.log(0.2 / 0.3)
                 + 0.2 * math.log(0.2 / 0.35) + 0.4 * math.log(0.4 / 0.35) + 0.4 * math.log(0.4 / 0.3)
                 + 0.7 * math.log(0.7 / 0.45) + 0.25 * math.log(0.25 / 0.425)
                 + 0.05 * math.log(0.05 / 0.125)
                 + 0.2 * math.log(0.2 / 0.45) + 0.6 * math.log(0.6 / 0.425) + 0.2 * math.log(0.2 / 0.125))
    expected = {"forward_kl": fkl, "reverse_kl": rkl, "tv": tv, "jsd": jsd}
    terms = {name: make(name) for name in expected}
    for chunk in (1, None):
        loss, sums = token_loss(h, Head(w), targets, count=2, terms=terms,
                                weights={"forward_kl": 1.0}, teacher=teacher, chunk=chunk)
        for name, value in expected.items():
            assert sums[name].item() == pytest.approx(value, rel=1e-5)
        assert loss.item() == pytest.approx(fkl / 2, rel=1e-5)
        # CE over the student's full vocabulary; argmax of rows 0 and 1 is 0 and 2.
        assert sums["ce"].item() == pytest.approx(-(math.log(0.4) + math.log(0.6)), rel=1e-5)
        assert sums["correct"].item() == 2


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bias", [True, False])
def test_offline_topk_matches_naive_for_every_chunk_size(name, bias):
    k, T = 3, 2.0
    h, w, b, targets = student(bias=bias)
    t_logp = F.log_softmax(2 * torch.randn(M, V) / T, -1)
    top = t_logp.topk(k, -1)
    teacher = TeacherRows(topk_logp=top.values, topk_ids=top.indices, topk_T=T)
    terms = {name: make(name, T=T, frac=0.3)}
    weights = {"ce": 0.5, name: 1.5}
    kwargs = {"count": 9, "terms": terms, "weights": weights, "teacher": teacher}
    naive = run_naive(h, w, b, targets, **kwargs)
    results = [run_chunked(h, w, b, targets, chunk, **kwargs) for chunk in (1, 3, None)]
    for result in results:
        assert_matches_naive(result, naive, [name])
    assert_same_across_chunks(results)
    assert abs(naive[1][name].item()) > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_offline_full_vocab_topk_equals_online(name):
    T = 1.5
    h, w, b, targets = student()
    t_logits = 2 * torch.randn(M, V)
    online = TeacherRows(hidden=t_logits, head=Head(torch.eye(V)))
    top = F.log_softmax(t_logits / T, -1).topk(V, -1)  # every token, in the teacher's order
    offline = TeacherRows(topk_logp=top.values, topk_ids=top.indices, topk_T=T)
    terms = {name: make(name, T=T)}
    weights = {"ce": 1.0, name: 1.0}
    on = run_chunked(h, w, b, targets, 3, count=M, terms=terms, weights=weights, teacher=online)
    off = run_chunked(h, w, b, targets, 3, count=M, terms=terms, weights=weights, teacher=offline)
    torch.testing.assert_close(off[0], on[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(off[1][name], on[1][name], rtol=1e-5, atol=1e-5)
    for g_off, g_on in zip(off[2], on[2], strict=True):
        torch.testing.assert_close(g_off, g_on, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- chunked loss: edge cases


@pytest.mark.parametrize("bias", [True, False])
def test_zero_rows_gives_zero_and_backward_runs(bias):
    h = torch.zeros(0, H, requires_grad=True)
    w = torch.randn(V, H, requires_grad=True)
    b = torch.randn(V, requires_grad=True) if bias else None
    teacher = TeacherRows(hidden=torch.zeros(0, 6), head=Head(torch.randn(V, 6)))
    terms = {"forward_kl": ForwardKL(), "tv": TV()}
    loss, sums = token_loss(h, Head(w, b), torch.zeros(0, dtype=torch.long), count=0, terms=terms,
                            weights={"ce": 1.0, "forward_kl": 1.0}, teacher=teacher)
    assert loss.item() == 0.0
    assert set(sums) == {"ce", "correct", "forward_kl", "tv"}
    assert all(v.item() == 0.0 for v in sums.values())
    loss.backward()
    assert h.grad is not None and h.grad.shape == (0, H)
    assert w.grad is not None and torch.equal(w.grad, torch.zeros_like(w))


@pytest.mark.parametrize("chunk", [1, 3, None])
def test_token_sums_match_naive(chunk):
    h, w, b, targets = student(rows=9)
    logits = F.linear(h.double(), w.double(), b.double())
    # Make a few argmax hits certain, so "correct" is neither 0 nor everything.
    targets[:3] = logits[:3].argmax(-1)
    targets[3:] = (logits[3:].argmax(-1) + 1) % V
    sums = token_sums(h, Head(w, b), targets, chunk=chunk)
    assert set(sums) == {"ce", "correct"}
    expected_nll = F.cross_entropy(logits, targets, reduction="sum")
    assert sums["ce"].item() == pytest.approx(expected_nll.item(), rel=1e-5)
    assert sums["correct"].item() == 3
    assert not sums["ce"].requires_grad


@pytest.mark.parametrize("name", NAMES)
def test_chunked_loss_finite_where_both_heads_give_minus_inf(name):
    """The chunked path, online teacher: both output layers give -inf at the same vocabulary
    entries (bias -inf); loss, sums and every gradient stay finite and match the naive loss."""
    h, w, b, targets = student()
    b = minus_inf_at(b.detach(), BOTH_ZERO).requires_grad_()
    targets[(targets == BOTH_ZERO[0]) | (targets == BOTH_ZERO[1])] = 0  # targets have mass
    teacher = online_teacher()
    teacher.head.bias = minus_inf_at(teacher.head.bias, BOTH_ZERO)
    kwargs = {"count": M, "terms": {name: make(name)}, "weights": {"ce": 1.0, name: 1.0},
              "teacher": teacher}
    loss, sums, grads = run_chunked(h, w, b, targets, 3, **kwargs)
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in sums.values())
    assert all(torch.isfinite(g).all() for g in grads)
    assert (grads[2][BOTH_ZERO] == 0).all()  # no gradient to the bias of the impossible tokens
    kept = [i for i in range(V) if i not in BOTH_ZERO]
    assert torch.allclose(grads[1][kept], run_naive(h, w, b, targets, **kwargs)[2][1][kept].float(), atol=1e-5)
