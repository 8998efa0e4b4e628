"""Several teachers' ensemble targets and mutual learning's cohort loss, against values worked
out by hand from the formulas (distill.ensemble, distill.mutual)."""

import math

import pytest
import torch
from torch import nn

from distill import KD, Batch, Distiller
from distill.contracts import Outputs
from distill.ensemble import Ensemble, MemberTerm, per_teacher_terms
from distill.errors import DistillError
from distill.losses.fitnet import FitNet
from distill.mutual import Cohort

LN3 = math.log(3.0)


class Fixed(nn.Module):
    """A 'model' that outputs the same logits for every input row (times `scale`)."""

    def __init__(self, logits, scale: float = 1.0):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits, dtype=torch.float32))
        self.scale = scale

    def forward(self, x):
        return self.scale * self.logits.expand(x.shape[0], -1)


def test_ensemble_targets_are_the_weighted_mean_of_probabilities_at_T():
    # p1 = softmax([0, ln3]) = [1/4, 3/4]; p2 = [3/4, 1/4]; weights 1 : 3 -> shares 1/4, 3/4
    # p_bar = 1/4 [1/4, 3/4] + 3/4 [3/4, 1/4] = [10/16, 6/16] = [0.625, 0.375]
    for T in (1.0, 2.0):
        ens = Ensemble({"a": Fixed([0.0, LN3], T), "b": Fixed([LN3, 0.0], T)}, {"a": 1.0, "b": 3.0}, T)
        p = torch.softmax(ens(torch.zeros(2, 1)) / T, dim=-1)
        assert torch.allclose(p, torch.tensor([[0.625, 0.375]] * 2), atol=1e-6)


def test_kd_against_the_ensemble_by_hand():
    # student logits [0, 0] -> q = [1/2, 1/2]; KL(p_bar || q) = 0.625 ln 1.25 + 0.375 ln 0.75
    kl = 0.625 * math.log(1.25) + 0.375 * math.log(0.75)  # 0.031583...
    T = 2.0
    ens = Ensemble({"a": Fixed([0.0, LN3], T), "b": Fixed([LN3, 0.0], T)}, {"a": 1.0, "b": 3.0}, T)
    student = Fixed([0.0, 0.0])
    d = Distiller(ens, student, {"kd": (KD(T=T), 1.0)}, ce_weight=0.0)
    out = d(Batch(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long), torch.arange(4)))
    assert out.terms["kd"].item() == pytest.approx(T * T * kl, rel=1e-5)


def test_ensemble_state_holds_members_mixing_weights_and_T():
    ens = Ensemble({"a": nn.Linear(2, 3), "b": nn.Linear(2, 3)}, {"a": 1.0, "b": 1.0}, 4.0)
    keys = set(ens.state_dict())
    assert {"a.weight", "b.bias", "_weights", "_T"} <= keys
    other = Ensemble({"a": nn.Linear(2, 3), "b": nn.Linear(2, 3)}, {"a": 1.0, "b": 2.0}, 4.0)
    assert not torch.equal(ens.state_dict()["_weights"], other.state_dict()["_weights"])


def test_per_teacher_terms_read_each_teachers_own_logits():
    # KD(T=1) of student [0,0] to a teacher [0, ln3]: KL([1/4,3/4] || [1/2,1/2])
    kl_a = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    terms = per_teacher_terms({"kd": (KD(T=1.0), 0.8)}, {"a": 1.0, "b": 3.0})
    assert set(terms) == {"kd_a", "kd_b"}
    assert terms["kd_a"][1] == pytest.approx(0.8 * 0.25) and terms["kd_b"][1] == pytest.approx(0.8 * 0.75)
    ens = Ensemble({"a": Fixed([0.0, LN3]), "b": Fixed([LN3, 0.0])}, {"a": 1.0, "b": 3.0}, 1.0)
    d = Distiller(ens, Fixed([0.0, 0.0]), terms, ce_weight=0.0)
    out = d(Batch(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long), torch.arange(3)))
    assert out.terms["kd_a"].item() == pytest.approx(kl_a, rel=1e-5)
    assert out.terms["kd_b"].item() == pytest.approx(kl_a, rel=1e-5)  # the mirror image: the same KL
    assert out.loss.item() == pytest.approx(0.8 * kl_a, rel=1e-5)


def test_per_teacher_terms_keep_feature_terms_whole():
    fit = FitNet(student="0", teacher="a.0")
    terms = per_teacher_terms({"kd": (KD(), 1.0), "hint": (fit, 0.5)}, {"a": 1.0, "b": 1.0})
    assert terms["hint"] == (fit, 0.5) and isinstance(terms["kd_a"][0], MemberTerm)


def _cohort_batch(n=2):
    return Batch(torch.zeros(n, 1), torch.tensor([0, 1])[:n], torch.arange(n))


def test_cohort_loss_by_hand():
    # z1 = [0, ln3] -> p1 = [1/4, 3/4]; z2 = [0, 0] -> p2 = [1/2, 1/2]; labels 0 and 1.
    # CE1 = mean(-ln 1/4, -ln 3/4); CE2 = ln 2
    # L = CE1 + KL(p2 || p1) + CE2 + KL(p1 || p2)   (ce weight 1, kd weight 1 at T = 1)
    p1, p2 = (0.25, 0.75), (0.5, 0.5)
    ce1 = (-math.log(0.25) - math.log(0.75)) / 2
    ce2 = math.log(2.0)
    kl21 = sum(b * math.log(b / a) for a, b in zip(p1, p2, strict=True))
    kl12 = sum(a * math.log(a / b) for a, b in zip(p1, p2, strict=True))
    cohort = Cohort([Fixed([0.0, LN3]), Fixed([0.0, 0.0])], [{"kd": (KD(T=1.0), 1.0)} for _ in range(2)],
                    1.0, ["peer-1"])
    out = cohort(_cohort_batch())
    assert out.loss.item() == pytest.approx(ce1 + kl21 + ce2 + kl12, rel=1e-5)
    assert out.terms["ce"].item() == pytest.approx((ce1 + ce2) / 2, rel=1e-5)
    assert out.terms["kd"].item() == pytest.approx((kl21 + kl12) / 2, rel=1e-5)


def test_cohort_gradient_of_each_student_is_its_own_loss_only():
    a, b = Fixed([0.3, -0.2, 0.1]), Fixed([-0.5, 0.4, 0.2])
    cohort = Cohort([a, b], [{"kd": (KD(T=2.0), 0.7)} for _ in range(2)], 0.5, ["peer-1"])
    cohort(_cohort_batch()).loss.backward()
    # student a alone: 0.5 CE(a) + 0.7 KD(a -> b detached)
    a2, b2 = Fixed(a.logits.tolist()), Fixed(b.logits.tolist())
    d = Distiller(b2, a2, {"kd": (KD(T=2.0), 0.7)}, ce_weight=0.5)
    d(_cohort_batch()).loss.backward()
    assert torch.allclose(a.logits.grad, a2.logits.grad, atol=1e-6)
    assert b2.logits.grad is None  # the teacher side took no gradient


def test_cohort_of_three_averages_over_the_others():
    zs = [[0.0, LN3], [0.0, 0.0], [LN3, 0.0]]
    cohort = Cohort([Fixed(z) for z in zs], [{"kd": (KD(T=1.0), 1.0)} for _ in zs], 0.0, ["peer-1", "peer-2"])
    out = cohort(_cohort_batch())
    ps = [torch.softmax(torch.tensor(z), -1) for z in zs]
    kl = [[float((ps[j] * (ps[j].log() - ps[k].log())).sum()) for j in range(3)] for k in range(3)]
    expected = sum(sum(kl[k][j] for j in range(3) if j != k) / 2 for k in range(3))
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


def test_cohort_refuses_feature_terms_and_a_cohort_of_one():
    with pytest.raises(DistillError, match="logits only"):
        Cohort([nn.Linear(2, 2), nn.Linear(2, 2)], [{"hint": (FitNet("weight", "weight"), 1.0)}] * 2, 1.0, ["peer-1"])
    with pytest.raises(ValueError, match="two or more"):
        Cohort([nn.Linear(2, 2)], [{}], 1.0, [])


def test_member_term_hands_the_member_logits_to_the_term():
    term = MemberTerm(KD(T=1.0), "b")
    student = Outputs(torch.zeros(2, 2))
    teacher = Outputs(torch.zeros(2, 2), {"b": torch.tensor([[0.0, LN3]] * 2)})
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert term(student, teacher, _cohort_batch()).item() == pytest.approx(kl, rel=1e-5)
    assert term.teacher_layers == ["b"]
