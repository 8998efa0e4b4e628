"""Held-out metrics against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distill.data.loader import TensorLoader
from distill.metrics import (
    agreement,
    calibration_bins,
    collect_logits,
    compute_metrics,
    confusion_matrix,
    evaluate_model,
    expected_calibration_error,
    kl_teacher_student,
    nll,
    per_class_accuracy,
    topk_accuracy,
)


def logits_of(probs) -> torch.Tensor:
    """Logits whose softmax is exactly `probs` (log-probabilities)."""
    return torch.tensor(probs, dtype=torch.float64).log().float()


# Five samples, two classes, confidences chosen away from the bin edges k/15.
ECE_PROBS = [[0.9, 0.1], [0.08, 0.92], [0.3, 0.7], [0.85, 0.15], [0.45, 0.55]]
ECE_LABELS = torch.tensor([0, 0, 1, 1, 1])


def test_ece_by_hand():
    # confidence / correct / bin ((m-1)/15, m/15], 0-based index:
    #   0.90 right  bin 13 (0.867, 0.933]      0.92 wrong  bin 13
    #   0.70 right  bin 10 (0.667, 0.733]      0.85 wrong  bin 12 (0.800, 0.867]
    #   0.55 right  bin  8 (0.533, 0.600]
    # ECE = 2/5 |0.5 - 0.91| + 1/5 |1 - 0.7| + 1/5 |0 - 0.85| + 1/5 |1 - 0.55|
    #     = 0.164 + 0.06 + 0.17 + 0.09 = 0.484 -> 48.4 %
    ece = expected_calibration_error(logits_of(ECE_PROBS), ECE_LABELS)
    assert ece == pytest.approx(48.4, abs=1e-4)


def test_reliability_bins_by_hand():
    bins = calibration_bins(logits_of(ECE_PROBS), ECE_LABELS, n_bins=15)
    assert len(bins["edges"]) == 16 and bins["edges"][0] == 0 and bins["edges"][-1] == 1
    expected_counts = [0] * 15
    for b, c in ((8, 1), (10, 1), (12, 1), (13, 2)):
        expected_counts[b] = c
    assert bins["count"] == expected_counts
    assert bins["accuracy"][13] == pytest.approx(0.5)
    assert bins["confidence"][13] == pytest.approx(0.91, abs=1e-6)
    assert bins["accuracy"][12] == 0 and bins["accuracy"][10] == 1
    assert bins["confidence"][0] is None and bins["accuracy"][0] is None  # empty bins


def test_ece_of_a_perfectly_calibrated_bin_is_zero_and_certainty_goes_to_the_last_bin():
    # confidence 0.75 four times, three right: accuracy 0.75 = confidence
    probs = [[0.75, 0.25]] * 4
    assert expected_calibration_error(logits_of(probs), torch.tensor([0, 0, 0, 1])) == pytest.approx(0, abs=1e-5)
    sure = torch.tensor([[50.0, -50.0], [-50.0, 50.0]])  # confidence 1.0 exactly
    bins = calibration_bins(sure, torch.tensor([0, 1]), n_bins=15)
    assert bins["count"][-1] == 2 and expected_calibration_error(sure, torch.tensor([0, 1])) == 0


def test_nll_by_hand():
    probs = [[0.5, 0.25, 0.25], [0.1, 0.6, 0.3]]
    value = nll(logits_of(probs), torch.tensor([0, 2]))
    assert value == pytest.approx((math.log(2) + math.log(1 / 0.3)) / 2, rel=1e-6)


def test_top1_and_top5_by_hand():
    logits = torch.tensor([[6.0, 5, 4, 3, 2, 1]] * 4)  # ranks: class 0 first ... class 5 sixth
    labels = torch.tensor([0, 4, 5, 1])  # ranks 1, 5, 6, 2
    assert topk_accuracy(logits, labels, 1) == pytest.approx(25.0)
    assert topk_accuracy(logits, labels, 5) == pytest.approx(75.0)
    assert topk_accuracy(logits[:, :3], torch.tensor([2, 2, 2, 2]), 5) == 100.0  # k capped at C


def test_confusion_and_per_class_accuracy_by_hand():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    preds = torch.tensor([0, 1, 1, 2, 0, 2])
    logits = nn.functional.one_hot(preds, 4).float()  # 4 classes; class 3 never occurs
    assert confusion_matrix(logits, labels).tolist() == [
        [1, 1, 0, 0],
        [0, 1, 0, 0],
        [1, 0, 2, 0],
        [0, 0, 0, 0],
    ]
    acc = per_class_accuracy(logits, labels)
    assert acc[:3] == pytest.approx([50.0, 100.0, 200 / 3])
    assert acc[3] is None


def test_agreement_by_hand():
    student = nn.functional.one_hot(torch.tensor([0, 1, 2, 1]), 3).float()
    teacher = nn.functional.one_hot(torch.tensor([0, 1, 1, 1]), 3).float()
    assert agreement(student, teacher) == pytest.approx(75.0)


def test_kl_teacher_student_by_hand():
    teacher = logits_of([[0.5, 0.5], [0.2, 0.8]])
    student = logits_of([[0.25, 0.75], [0.2, 0.8]])
    # sample 1: 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75); sample 2: 0; batchmean over 2 samples
    expected = (0.5 * math.log(2) + 0.5 * math.log(2 / 3)) / 2
    assert kl_teacher_student(student, teacher) == pytest.approx(expected, rel=1e-5)
    assert kl_teacher_student(teacher, teacher) == pytest.approx(0, abs=1e-7)
    assert kl_teacher_student(student, teacher) > 0


def test_compute_metrics_ignores_unlabelled_for_label_metrics_only():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, -1, -1])
    teacher = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0], [0.0, 2.0]])
    m = compute_metrics(logits, labels, teacher)
    assert m["n"] == 4 and m["n_labelled"] == 2
    assert m["acc"] == pytest.approx(50.0)
    assert m["confusion"] == [[1, 1], [0, 0]]
    assert m["agreement"] == pytest.approx(75.0)  # over all 4 samples
    none = compute_metrics(logits, torch.full((4,), -1))
    assert none["acc"] is None and none["ece"] is None and "agreement" not in none


def test_collect_logits_keeps_order_and_restores_training_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.Linear(8, 4)).train()
    x, y = torch.randn(23, 3), torch.randint(0, 4, (23,))
    preds = collect_logits(model, TensorLoader(x, y, batch_size=5), "cpu")
    assert model.training
    with torch.no_grad():
        expected = model.eval()(x)
    assert torch.allclose(preds.logits, expected, atol=1e-6)  # eval mode: no dropout
    assert preds.index.tolist() == list(range(23)) and torch.equal(preds.labels, y)
    plain = collect_logits(model, [(x[:10], y[:10]), (x[10:], y[10:])])  # (x, y) batches
    assert plain.index.tolist() == list(range(23))


def test_evaluate_model_with_itself_as_teacher():
    torch.manual_seed(0)
    model = nn.Linear(3, 4)
    x, y = torch.randn(40, 3), torch.randint(0, 4, (40,))
    m = evaluate_model(model, TensorLoader(x, y, batch_size=16), "cpu", teacher=model)
    assert m["agreement"] == 100.0 and m["kl_teacher"] == pytest.approx(0, abs=1e-7)
    assert m["acc"] == pytest.approx(100 * (model(x).argmax(-1) == y).float().mean().item())
    assert sum(m["reliability"]["count"]) == 40 and len(m["per_class_acc"]) == 4


def test_agrees_with_torchmetrics_when_installed():
    tm = pytest.importorskip("torchmetrics.functional.classification")
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(500, 7, generator=g)
    labels = torch.randint(0, 7, (500,), generator=g)
    probs = logits.softmax(-1)
    ece = tm.multiclass_calibration_error(probs, labels, num_classes=7, n_bins=15).item()
    assert expected_calibration_error(logits, labels) == pytest.approx(100 * ece, abs=1e-4)
    top5 = tm.multiclass_accuracy(probs, labels, num_classes=7, top_k=5, average="micro").item()
    assert topk_accuracy(logits, labels, 5) == pytest.approx(100 * top5, abs=1e-4)
    cm = tm.multiclass_confusion_matrix(probs, labels, num_classes=7)
    assert torch.equal(confusion_matrix(logits, labels), cm)
