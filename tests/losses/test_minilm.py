"""MiniLM attention-distribution and value-relation losses: hand-worked values, masking, heads
(generic checks on a tiny BERT pair and the layer maps: test_transformer.py)."""

import math

import pytest
import torch

from distill.contracts import Batch, Outputs
from distill.errors import DistillError
from distill.losses.minilm import MiniLMAttention, MiniLMValue, attention_kl, value_relation_kl


def out(**features) -> Outputs:
    return Outputs(torch.zeros(1, 3), {k.replace("_", "."): v for k, v in features.items()})


def batch(mask) -> Batch:
    mask = None if mask is None else torch.tensor(mask)
    return Batch(torch.zeros(1 if mask is None else len(mask), 3, dtype=torch.long), mask=mask)


def kl_by_hand(p, q, mask):
    """Mean over heads and real queries of sum_k p log(p / q) (p = 0 adds nothing); [B][H][L][L]."""
    total, rows = 0.0, 0
    for b in range(len(p)):
        for a in range(len(p[b])):
            for t in range(len(p[b][a])):
                if mask is None or mask[b][t]:
                    total += sum(x * math.log(x / y) for x, y in zip(p[b][a][t], q[b][a][t], strict=True) if x > 0)
                    rows += 1
    return total / rows


def vr_by_hand(v, heads, mask):
    """softmax over the real keys of (v_a[t] . v_a[k]) / sqrt(d_head), per head; v: [B][L][width]."""
    d_head = len(v[0][0]) // heads
    result = []
    for b, seq in enumerate(v):
        per_head = []
        for a in range(heads):
            part = [tok[a * d_head:(a + 1) * d_head] for tok in seq]
            rows = []
            for t in range(len(seq)):
                keys = [k for k in range(len(seq)) if mask is None or mask[b][k]]
                scores = {k: sum(x * y for x, y in zip(part[t], part[k], strict=True)) / math.sqrt(d_head)
                          for k in keys}
                z = sum(math.exp(s) for s in scores.values())
                rows.append([math.exp(scores[k]) / z if k in scores else 0.0 for k in range(len(seq))])
            per_head.append(rows)
        result.append(per_head)
    return result


def attention_term(s_heads=2, t_heads=2, length=3, layers="last", s_depth=2, t_depth=4):
    term = MiniLMAttention(layers)
    term.map_layers(s_depth, t_depth)
    term.setup({p: (1, s_heads, length, length) for p in term.student_layers},
               {p: (1, t_heads, length, length) for p in term.teacher_layers})
    return term


# ---------------------------------------------------------------- minilm_attention

# one sequence, 2 heads, 3 positions, the last one padding (probability 0 as a key)
A_T = [[[[0.5, 0.5, 0.0], [0.9, 0.1, 0.0], [0.2, 0.2, 0.6]],
        [[1.0, 0.0, 0.0], [0.3, 0.7, 0.0], [0.0, 0.0, 1.0]]]]
A_S = [[[[0.25, 0.75, 0.0], [0.5, 0.5, 0.0], [0.5, 0.3, 0.2]],
        [[0.6, 0.4, 0.0], [0.3, 0.7, 0.0], [0.1, 0.1, 0.8]]]]
MASK = [[1, 1, 0]]


def test_attention_hand_value():
    # rows by hand: 0.5 ln 2 + 0.5 ln(2/3); 0.9 ln 1.8 + 0.1 ln 0.2; ln(1/0.6); 0 (equal)
    rows = [0.5 * math.log(2) + 0.5 * math.log(2 / 3), 0.9 * math.log(1.8) + 0.1 * math.log(0.2),
            math.log(1 / 0.6), 0.0]
    expected = sum(rows) / 4  # 2 heads x 2 real queries
    assert kl_by_hand(A_T, A_S, MASK) == pytest.approx(expected)
    term = attention_term()
    assert term.student_layers == ("attention.2",) and term.teacher_layers == ("attention.4",)
    got = term(out(attention_2=torch.tensor(A_S)), out(attention_4=torch.tensor(A_T)), batch(MASK))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_attention_padding_changes_the_value_and_its_content_is_irrelevant():
    s, t = torch.tensor(A_S), torch.tensor(A_T)
    masked = attention_kl(s, t, torch.tensor(MASK) != 0)
    everything = attention_kl(s, t, None)
    assert everything.item() == pytest.approx(kl_by_hand(A_T, A_S, None), rel=1e-6)
    assert everything.item() != pytest.approx(masked.item())
    garbage_s, garbage_t = s.clone(), t.clone()
    garbage_s[0, :, 2], garbage_t[0, :, 2] = float("nan"), -5.0  # the padded query's rows
    garbage_s[0, :, :2, 2] = 0.3  # mass on the padded key where the teacher has none: adds nothing
    garbage_s.requires_grad_()
    again = attention_kl(garbage_s, garbage_t, torch.tensor(MASK) != 0)
    assert again.item() == pytest.approx(masked.item())
    again.backward()
    assert torch.isfinite(garbage_s.grad).all() and garbage_s.grad[0, :, 2].abs().sum() == 0


def test_attention_zero_when_equal_and_gradients_reach_the_student_only():
    logits = torch.randn(2, 2, 4, 4)
    a = logits.softmax(-1)
    assert attention_kl(a, a.clone(), torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]) != 0).item() == pytest.approx(0, abs=1e-7)
    s_logits = torch.randn(2, 2, 4, 4, requires_grad=True)
    t = torch.randn(2, 2, 4, 4).softmax(-1).requires_grad_()
    term = attention_term(length=4, s_depth=3, t_depth=3)
    term(out(attention_3=s_logits.softmax(-1)), out(attention_3=t), batch([[1, 1, 1, 0], [1, 1, 0, 0]])).backward()
    assert s_logits.grad.abs().sum() > 0 and t.grad is None
    assert list(term.parameters()) == []


def test_attention_student_zero_where_the_teacher_is_not_stays_finite():
    t = torch.tensor([[[[0.5, 0.5]]]])
    s = torch.tensor([[[[1.0, 0.0]]]], requires_grad=True)
    value = attention_kl(s, t, None)
    assert torch.isfinite(value) and value.item() > 40  # 0.5 ln(0.5 / tiny): large, not inf
    value.backward()
    assert torch.isfinite(s.grad).all()


def test_attention_head_counts_must_match():
    with pytest.raises(ValueError, match="'attention.2' has 2 heads and the teacher's 'attention.4' 4"):
        attention_term(s_heads=2, t_heads=4)
    with pytest.raises(ValueError, match=r"\(batch, heads, L, L\)"):
        term = MiniLMAttention()
        term.map_layers(1, 1)
        term.setup({"attention.1": (1, 3, 4)}, {"attention.1": (1, 3, 4)})


def test_attention_sums_several_pairs():
    term = attention_term(layers="uniform")  # 2 <- 4: attention.1 <- attention.2, attention.2 <- attention.4
    s, t = torch.tensor(A_S), torch.tensor(A_T)
    value = term(out(attention_1=s, attention_2=t), out(attention_2=t, attention_4=t), batch(MASK))
    assert value.item() == pytest.approx(kl_by_hand(A_T, A_S, MASK), rel=1e-6)  # the second pair is 0


# ---------------------------------------------------------------- minilm_value

# student: 2 heads of d_head 1 (width 2); teacher: 2 heads of d_head 2 (width 4); the last token pads
V_S = [[[1.0, 0.0], [0.0, 2.0], [5.0, -5.0]]]
V_T = [[[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 2.0, 0.0], [3.0, 3.0, 3.0, 3.0]]]


def value_term(heads=2, d_s=2, d_t=4, length=3, extra_s=None, extra_t=None):
    term = MiniLMValue(heads=heads)
    term.map_layers(2, 4)
    term.setup({"values.2": (1, length, d_s), **(extra_s or {})}, {"values.4": (1, length, d_t), **(extra_t or {})})
    return term


def test_value_relation_hand_value():
    vr_t, vr_s = vr_by_hand(V_T, 2, MASK), vr_by_hand(V_S, 2, MASK)
    # worked once more by hand, the student's head 1 at query 1: scores 0 and 4 over the real keys
    assert vr_s[0][1][1] == pytest.approx([1 / (1 + math.e ** 4), math.e ** 4 / (1 + math.e ** 4), 0.0])
    # and the teacher's head 0 at query 0: (1, 0).(1, 0) / sqrt 2, (1, 0).(1, 1) / sqrt 2, the same
    assert vr_t[0][0][0][:2] == pytest.approx([0.5, 0.5])
    expected = kl_by_hand(vr_t, vr_s, MASK)
    term = value_term()
    assert term.split == 2
    got = term(out(values_2=torch.tensor(V_S)), out(values_4=torch.tensor(V_T)), batch(MASK))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_value_relation_padding_is_left_out_of_the_softmax_and_the_mean():
    s, t = torch.tensor(V_S), torch.tensor(V_T)
    real = torch.tensor(MASK) != 0
    masked = value_relation_kl(s, t, 2, real)
    everything = value_relation_kl(s, t, 2, None)
    assert everything.item() == pytest.approx(kl_by_hand(vr_by_hand(V_T, 2, None), vr_by_hand(V_S, 2, None), None),
                                              rel=1e-5)
    assert everything.item() != pytest.approx(masked.item())
    garbage_s, garbage_t = s.clone(), t.clone()
    garbage_s[0, 2], garbage_t[0, 2] = float("nan"), 1e4  # the padded token, as a key and as a query
    garbage_s.requires_grad_()
    again = value_relation_kl(garbage_s, garbage_t, 2, real)
    assert again.item() == pytest.approx(masked.item())
    again.backward()
    assert torch.isfinite(garbage_s.grad).all() and garbage_s.grad[0, 2].abs().sum() == 0


def test_value_relation_zero_when_equal_and_gradients_reach_the_student_only():
    v = torch.randn(2, 4, 6)
    real = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]) != 0
    assert value_relation_kl(v, v.clone(), 3, real).item() == pytest.approx(0.0, abs=1e-6)
    s, t = torch.randn(2, 4, 6, requires_grad=True), torch.randn(2, 4, 12, requires_grad=True)
    value_relation_kl(s, t, 3, real).backward()
    assert s.grad.abs().sum() > 0 and t.grad is None


def test_value_heads_must_divide_both_widths():
    with pytest.raises(ValueError, match="teacher's values are 6 wide, not a multiple of 4"):
        value_term(heads=4, d_s=8, d_t=6)


def test_value_heads_default_to_the_probed_attention_maps():
    default = MiniLMValue()
    default.map_layers(2, 4)  # heads=None: the attention maps are hooked too, for their shapes
    assert default.student_layers == ("values.2", "attention.2")
    assert default.teacher_layers == ("values.4", "attention.4")
    explicit = MiniLMValue(heads=2)
    explicit.map_layers(2, 4)
    assert (explicit.student_layers, explicit.teacher_layers) == (("values.2",), ("values.4",))
    term = value_term(heads=None, extra_s={"attention.2": (1, 2, 3, 3)}, extra_t={"attention.4": (1, 2, 3, 3)})
    assert term.split == 2
    with pytest.raises(ValueError, match="no student feature 'attention.2' was captured"):
        value_term(heads=None)
    with pytest.raises(ValueError, match="has 2 heads and the teacher's 'attention.4' 4"):
        value_term(heads=None, extra_s={"attention.2": (1, 2, 3, 3)}, extra_t={"attention.4": (1, 4, 3, 3)})


@pytest.mark.parametrize("heads", [0, -2, True, 2.0, "2"])
def test_value_heads_must_be_a_positive_count(heads):
    with pytest.raises(ValueError, match="heads must be a number of heads >= 1"):
        MiniLMValue(heads=heads)


def test_value_needs_setup_before_forward():
    term = MiniLMValue(heads=1)
    term.map_layers(1, 1)
    v = torch.zeros(1, 2, 2)
    with pytest.raises(RuntimeError, match=r"setup\(\) was not called"):
        term(out(values_1=v), out(values_1=v), batch(None))


def test_attention_refuses_maps_after_attention_dropout_on_the_first_training_step():
    term = attention_term()
    a = torch.tensor(A_T)
    dropped = torch.nn.functional.dropout(torch.full((1, 2, 3, 3), 1 / 3), p=0.5, training=True)
    term.eval()  # evaluation: no dropout, and no check
    term(out(attention_2=dropped), out(attention_4=a), batch(MASK))
    term.train()
    with pytest.raises(DistillError, match="attention_probs_dropout_prob=0.0"):
        term(out(attention_2=dropped), out(attention_4=a), batch(MASK))
    term(out(attention_2=torch.tensor(A_S)), out(attention_4=a), batch(MASK))  # distributions: checked once
    assert term.checked
    term(out(attention_2=dropped), out(attention_4=a), batch(MASK))  # not read back again
