"""TinyBERT hidden-state and embedding losses: hand-worked values, masking, projections (generic
checks on a tiny BERT pair and the layer maps: test_transformer.py)."""

import math

import pytest
import torch
from torch import nn

from distill.contracts import Batch, Outputs
from distill.losses.tinybert import TinyBERTEmbedding, TinyBERTHidden
from distill.losses.transformer import masked_token_mse


def out(**features) -> Outputs:
    """Outputs holding tap features given as hidden_1=..., embeddings=... (dots in paths)."""
    return Outputs(torch.zeros(1, 3), {k.replace("_", "."): v for k, v in features.items()})


def batch(mask) -> Batch:
    mask = None if mask is None else torch.tensor(mask)
    return Batch(torch.zeros(1 if mask is None else len(mask), 3, dtype=torch.long), mask=mask)


def hidden_term(s_depth=2, t_depth=4, d_s=2, d_t=2, layers="uniform", weight=None, bias=None):
    term = TinyBERTHidden(layers)
    term.map_layers(s_depth, t_depth)
    term.setup({p: (1, 3, d_s) for p in term.student_layers}, {p: (1, 3, d_t) for p in term.teacher_layers})
    if weight is not None:
        with torch.no_grad():
            term.projector.weight.copy_(torch.tensor(weight))
            term.projector.bias.copy_(torch.tensor(bias))
    return term


def mse_by_hand(pred, target, mask):
    """Mean over the real tokens and units of (pred - target)^2; pred/target nested lists [B][L][d]."""
    total, count = 0.0, 0
    for b in range(len(pred)):
        for t in range(len(pred[b])):
            if mask is None or mask[b][t]:
                total += sum((p - q) ** 2 for p, q in zip(pred[b][t], target[b][t], strict=True))
                count += len(pred[b][t])
    return total / count


def linear_by_hand(x, weight, bias):
    return [[[sum(w * v for w, v in zip(row, tok, strict=True)) + c for row, c in zip(weight, bias, strict=True)]
             for tok in seq] for seq in x]


# ---------------------------------------------------------------- masked_token_mse


def test_masked_mse_hand_value():
    pred = [[[1.0, 2.0], [0.0, -1.0], [5.0, 5.0]]]
    target = [[[0.0, 2.0], [1.0, 1.0], [-3.0, 7.0]]]
    # real tokens 1 and 2: (1 + 0 + 1 + 4) / (2 tokens * 2 units); the third is padding
    got = masked_token_mse(torch.tensor(pred), torch.tensor(target), torch.tensor([[True, True, False]]))
    assert got.item() == pytest.approx(6 / 4)
    assert got.item() == pytest.approx(mse_by_hand(pred, target, [[1, 1, 0]]))
    # without a mask every position counts: the reference's plain MSE
    everything = masked_token_mse(torch.tensor(pred), torch.tensor(target), None)
    assert everything.item() == pytest.approx((1 + 0 + 1 + 4 + 64 + 4) / 6)
    assert everything.item() == pytest.approx(nn.functional.mse_loss(torch.tensor(pred), torch.tensor(target)).item())


def test_masked_mse_pools_tokens_across_the_batch():
    pred = [[[1.0], [3.0]], [[2.0], [0.0]]]
    target = [[[0.0], [0.0]], [[0.0], [9.0]]]
    mask = [[1, 1], [1, 0]]  # 3 real tokens: (1 + 9 + 4) / 3, not the mean of per-row means
    got = masked_token_mse(torch.tensor(pred), torch.tensor(target), torch.tensor(mask) != 0)
    assert got.item() == pytest.approx(14 / 3)
    assert got.item() == pytest.approx(mse_by_hand(pred, target, mask))


# ---------------------------------------------------------------- tinybert_hidden


def test_hidden_hand_value_sums_the_mapped_layers_through_one_projection():
    # student depth 2, teacher depth 4, uniform: hidden.1 <- hidden.2, hidden.2 <- hidden.4
    weight, bias = [[2.0, 0.0], [1.0, -1.0]], [0.5, 0.0]
    term = hidden_term(weight=weight, bias=bias)
    assert term.pairs == ((1, 2), (2, 4))
    s1 = [[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]]
    s2 = [[[-1.0, 1.0], [1.0, 1.0], [0.0, 3.0]]]
    t2 = [[[2.0, 1.0], [0.0, 0.0], [9.0, 9.0]]]
    t4 = [[[0.0, 0.0], [1.0, 0.0], [4.0, -4.0]]]
    mask = [[1, 1, 0]]
    expected = (mse_by_hand(linear_by_hand(s1, weight, bias), t2, mask)
                + mse_by_hand(linear_by_hand(s2, weight, bias), t4, mask))
    student = out(hidden_1=torch.tensor(s1), hidden_2=torch.tensor(s2))
    teacher = out(hidden_2=torch.tensor(t2), hidden_4=torch.tensor(t4))
    assert term(student, teacher, batch(mask)).item() == pytest.approx(expected)
    # s1 W + b = (2.5, 1), (0.5, -1); s2 W + b = (-1.5, -2), (2.5, 0): worked once more by hand
    assert expected == pytest.approx(((0.25 + 0) + (0.25 + 1)) / 4 + ((2.25 + 4) + (2.25 + 0)) / 4)


def test_hidden_padding_changes_the_value_and_its_content_is_irrelevant():
    term = hidden_term(weight=[[1.0, 0.0], [0.0, 1.0]], bias=[0.0, 0.0])
    s = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [7.0, -7.0]]])
    t = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 0.0]]])
    mask = [[1, 1, 0]]
    value = term(out(hidden_1=s, hidden_2=s), out(hidden_2=t, hidden_4=t), batch(mask))
    unmasked = term(out(hidden_1=s, hidden_2=s), out(hidden_2=t, hidden_4=t), batch(None))
    assert value.item() == pytest.approx(2 * 1 / 4)  # one squared error of 1 over 2 tokens x 2 units, 2 layers
    assert unmasked.item() == pytest.approx(2 * (1 + 49 + 49) / 6)
    garbage_s, garbage_t = s.clone().requires_grad_(), t.clone()
    with torch.no_grad():
        garbage_s[0, 2] = float("nan")
        garbage_t[0, 2] = float("inf")
    again = term(out(hidden_1=garbage_s, hidden_2=garbage_s), out(hidden_2=garbage_t, hidden_4=garbage_t), batch(mask))
    assert again.item() == pytest.approx(value.item())
    again.backward()
    assert torch.isfinite(garbage_s.grad).all() and garbage_s.grad[0, 2].abs().sum() == 0
    assert torch.isfinite(term.projector.weight.grad).all()


def test_hidden_is_zero_for_equal_features_through_an_identity_projection():
    term = hidden_term(d_s=3, d_t=3, weight=torch.eye(3).tolist(), bias=[0.0] * 3)
    h = [torch.randn(2, 4, 3) for _ in range(2)]
    value = term(out(hidden_1=h[0], hidden_2=h[1]), out(hidden_2=h[0], hidden_4=h[1]), batch([[1, 1, 1, 0]] * 2))
    assert value.item() == pytest.approx(0.0, abs=1e-7)


def test_hidden_gradients_reach_the_student_and_the_projection_only():
    term = hidden_term(d_s=2, d_t=3)
    s = [torch.randn(2, 3, 2, requires_grad=True) for _ in range(2)]
    t = [torch.randn(2, 3, 3, requires_grad=True) for _ in range(2)]
    term(out(hidden_1=s[0], hidden_2=s[1]), out(hidden_2=t[0], hidden_4=t[1]), batch([[1, 1, 0], [1, 0, 0]])).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)
    assert all(x.grad is None for x in t)
    assert term.projector.weight.grad.abs().sum() > 0 and term.projector.bias.grad.abs().sum() > 0


def test_hidden_projection_is_one_linear_shared_by_the_layers_even_for_equal_widths():
    wide = hidden_term(s_depth=2, t_depth=2, d_s=2, d_t=5)
    assert isinstance(wide.projector, nn.Linear)
    assert (wide.projector.in_features, wide.projector.out_features) == (2, 5)
    assert [n for n, _ in wide.named_parameters()] == ["projector.weight", "projector.bias"]
    same = hidden_term(s_depth=2, t_depth=2, d_s=4, d_t=4)
    assert isinstance(same.projector, nn.Linear)  # as the reference's fit_dense: always a learned map
    assert same.projector.bias.abs().sum() == 0  # BERT init: N(0, 0.02) weights, zero bias
    assert same.projector.weight.std().item() < 0.1


def test_hidden_refuses_features_that_are_not_token_sequences():
    term = TinyBERTHidden()
    term.map_layers(1, 1)
    with pytest.raises(ValueError, match=r"\(batch, sequence, width\)"):
        term.setup({"hidden.1": (2, 8)}, {"hidden.1": (2, 8)})
    with pytest.raises(ValueError, match="no teacher feature 'hidden.1' was captured"):
        term.setup({"hidden.1": (2, 3, 8)}, {"hidden.2": (2, 3, 8)})


def test_hidden_needs_setup_before_forward():
    term = TinyBERTHidden()
    term.map_layers(1, 1)
    f = torch.zeros(1, 2, 2)
    with pytest.raises(RuntimeError, match=r"setup\(\) was not called"):
        term(out(hidden_1=f), out(hidden_1=f), batch(None))


def test_mask_of_the_wrong_shape_is_an_error():
    term = hidden_term(s_depth=1, t_depth=1)
    f = torch.zeros(1, 3, 2)
    with pytest.raises(ValueError, match=r"attention mask has shape \(1, 2\)"):
        term(out(hidden_1=f), out(hidden_1=f), batch([[1, 1]]))


# ---------------------------------------------------------------- tinybert_embedding


def embedding_term(d_s=2, d_t=2, weight=None, bias=None):
    term = TinyBERTEmbedding()
    term.setup({"embeddings": (1, 3, d_s)}, {"embeddings": (1, 3, d_t)})
    if weight is not None:
        with torch.no_grad():
            term.projector.weight.copy_(torch.tensor(weight))
            term.projector.bias.copy_(torch.tensor(bias))
    return term


def test_embedding_declares_its_paths_and_needs_no_map():
    term = TinyBERTEmbedding()
    assert term.student_layers == ("embeddings",) and term.teacher_layers == ("embeddings",)
    term.map_layers(2, 4)  # the same call as every transformer term: nothing to map
    assert term.student_layers == ("embeddings",)
    with pytest.raises(ValueError, match="depth"):
        term.map_layers(0, 4)


def test_embedding_hand_value_with_its_own_projection():
    weight, bias = [[1.0, 1.0], [0.0, 2.0], [1.0, 0.0]], [0.0, 1.0, -1.0]  # d_s = 2 -> d_t = 3
    term = embedding_term(d_s=2, d_t=3, weight=weight, bias=bias)
    e_s = [[[1.0, 2.0], [0.0, -1.0]], [[3.0, 0.0], [5.0, 5.0]]]
    e_t = [[[3.0, 5.0, 0.0], [0.0, 0.0, 0.0]], [[2.0, 1.0, 2.0], [0.0, 0.0, 0.0]]]
    mask = [[1, 1], [1, 0]]
    expected = mse_by_hand(linear_by_hand(e_s, weight, bias), e_t, mask)
    # projected: (3, 5, 0) | (-1, -1, -1) | (3, 1, 2); squared errors 0, 3 and 1 over 3 tokens x 3 units
    assert expected == pytest.approx(4 / 9)
    got = term(out(embeddings=torch.tensor(e_s)), out(embeddings=torch.tensor(e_t)), batch(mask))
    assert got.item() == pytest.approx(expected)
    unmasked = term(out(embeddings=torch.tensor(e_s)), out(embeddings=torch.tensor(e_t)), batch(None))
    # the padded token's projection (10, 11, 4) against 0 counts then
    assert unmasked.item() == pytest.approx((4 + (100 + 121 + 16)) / 12)


def test_embedding_zero_when_equal_and_gradients_reach_the_student_only():
    term = embedding_term(d_s=3, d_t=3, weight=torch.eye(3).tolist(), bias=[0.0] * 3)
    e = torch.randn(2, 4, 3)
    assert term(out(embeddings=e), out(embeddings=e), batch(None)).item() == pytest.approx(0.0, abs=1e-7)
    s, t = torch.randn(2, 4, 3, requires_grad=True), torch.randn(2, 4, 3, requires_grad=True)
    term(out(embeddings=s), out(embeddings=t), batch([[1, 1, 1, 0], [1, 1, 0, 0]])).backward()
    assert s.grad.abs().sum() > 0 and t.grad is None
    assert term.projector.weight.grad.abs().sum() > 0
    assert s.grad[0, 3].abs().sum() == 0 and s.grad[1, 2:].abs().sum() == 0  # padding: no gradient


def test_embedding_needs_setup_before_forward():
    e = torch.zeros(1, 2, 2)
    with pytest.raises(RuntimeError, match=r"setup\(\) was not called"):
        TinyBERTEmbedding()(out(embeddings=e), out(embeddings=e), batch(None))


def test_hand_helpers_agree_with_a_plain_formula():
    # the helpers above are plain loops; check one against math directly
    assert mse_by_hand([[[3.0]]], [[[1.0]]], None) == 4.0
    assert linear_by_hand([[[1.0, 2.0]]], [[3.0, 4.0]], [1.0]) == [[[12.0]]]
    assert math.isclose(mse_by_hand([[[1.0, 1.0]]], [[[0.0, 0.0]]], [[1]]), 1.0)
