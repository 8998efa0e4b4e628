"""Held-out metrics of a classifier, and of a student against its teacher.

Everything is computed from logits, in one pass over the data, by small vectorized functions:
top-1 / top-5 accuracy, negative log-likelihood, expected calibration error (ECE) with
reliability-diagram bins, teacher-student agreement and KL(teacher || student), per-class
accuracy and the confusion matrix.

Conventions (the same as summary.json): accuracies, agreement and ECE are percentages; NLL and
KL are in nats per sample. Label metrics use the labelled samples only (label -1 marks an
unlabelled sample); agreement and KL use every sample, since they need no label.

ECE follows Guo et al. 2017, "On Calibration of Modern Neural Networks": the top-1 confidence
max_k softmax(z)_k is put into M equal-width bins B_m = ((m-1)/M, m/M], and
ECE = sum_m |B_m|/n * |acc(B_m) - conf(B_m)|.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .contracts import UNLABELLED, as_batch
from .models.outputs import logits_of
from .runtime import all_reduce_sum

N_BINS = 15  # Guo et al. 2017


@dataclass
class Predictions:
    """A model's logits over a whole loader, on the CPU, in loader order."""

    logits: torch.Tensor  # (N, C) float32
    labels: torch.Tensor  # (N,) int64; -1 where unlabelled
    index: torch.Tensor  # (N,) int64 dataset indices (0..N-1 when the loader yields none)


@torch.inference_mode()
def collect_logits(model: torch.nn.Module, loader, device="cpu") -> Predictions:
    """Run `model` in eval mode over `loader` (batches (x, y[, index])); keep the logits.

    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    logits, labels, index, seen = [], [], [], 0
    try:
        for item in loader:
            batch = as_batch(item, "the evaluation loader")
            y = batch.targets
            out = logits_of(model(batch.inputs.to(device)))
            logits.append(out.float().cpu())
            labels.append(y.cpu().long())
            idx = batch.index.cpu().long() if batch.index is not None else torch.arange(seen, seen + len(y))
            index.append(idx)
            seen += len(y)
    finally:
        model.train(was_training)
    if not logits:
        raise ValueError("The loader yielded no batches; there is nothing to evaluate.")
    return Predictions(torch.cat(logits), torch.cat(labels), torch.cat(index))


@torch.no_grad()
def evaluate_classifier(model: torch.nn.Module, loader, device) -> dict[str, float]:
    """Top-1 accuracy (%) and mean cross-entropy over the labelled samples of `loader`; under
    DDP each process sees a shard and the sums are reduced over them."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, count
    for item in loader:
        batch = as_batch(item, "the evaluation loader").to(device)
        mask = batch.targets != UNLABELLED
        logits = logits_of(model(batch.inputs))[mask].float()
        y = batch.targets[mask]
        totals[0] += F.cross_entropy(logits, y, reduction="sum")
        totals[1] += (logits.argmax(-1) == y).sum()
        totals[2] += len(y)
    model.train(was_training)
    loss, correct, count = all_reduce_sum(totals).tolist()
    return {"acc": 100.0 * correct / max(count, 1), "loss": loss / max(count, 1)}


# ---------------------------------------------------------------- label metrics


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Percentage of samples whose label is among the k highest logits (k capped at C)."""
    k = min(k, logits.shape[-1])
    hit = (logits.topk(k, dim=-1).indices == labels[:, None]).any(dim=-1)
    return 100.0 * hit.double().mean().item()


def nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of the labels (cross-entropy, nats)."""
    return F.cross_entropy(logits.double(), labels).item()


def calibration_bins(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = N_BINS) -> dict:
    """Reliability-diagram data: per equal-width confidence bin ((m-1)/M, m/M], the mean
    top-1 confidence, the accuracy and the number of samples (empty bins: confidence and
    accuracy None). `edges` has n_bins + 1 entries from 0 to 1. Confidences and accuracies
    are fractions in [0, 1] here."""
    prob = logits.double().softmax(dim=-1)
    conf, pred = prob.max(dim=-1)
    correct = (pred == labels).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    # bucketize(right=False) gives i with edges[i] < conf <= edges[i+1]: right-closed bins
    # as in Guo et al.; a confidence of exactly 0 (impossible for a softmax) goes to bin 0.
    bins = torch.bucketize(conf, edges[1:-1], right=False)
    count = torch.bincount(bins, minlength=n_bins).double()
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, conf)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, correct)
    nonempty = count > 0
    return {
        "edges": edges.tolist(),
        "confidence": [c if ne else None for c, ne in zip((conf_sum / count).tolist(), nonempty.tolist(), strict=True)],
        "accuracy": [a if ne else None for a, ne in zip((acc_sum / count).tolist(), nonempty.tolist(), strict=True)],
        "count": count.long().tolist(),
    }


def ece_from_bins(bins: dict) -> float:
    """ECE (%) from `calibration_bins` output: sum over bins |B|/n * |acc(B) - conf(B)|."""
    n = sum(bins["count"])
    gap = sum(
        c / n * abs(a - p)
        for c, a, p in zip(bins["count"], bins["accuracy"], bins["confidence"], strict=True)
        if c
    )
    return 100.0 * gap


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = N_BINS) -> float:
    """Expected calibration error in percent (Guo et al. 2017; 15 equal-width bins by default)."""
    return ece_from_bins(calibration_bins(logits, labels, n_bins))


def per_class_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> list:
    """Accuracy (%) of each true class (recall); None for a class with no samples."""
    c = num_classes or logits.shape[-1]
    total = torch.bincount(labels, minlength=c)
    correct = torch.bincount(labels[logits.argmax(-1) == labels], minlength=c)
    return [100.0 * k / n if n else None for k, n in zip(correct.tolist(), total.tolist(), strict=True)]


def confusion_matrix(logits: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """(C, C) int64 counts: row = true class, column = predicted class."""
    c = num_classes or logits.shape[-1]
    pred = logits.argmax(-1)
    return torch.bincount(labels * c + pred, minlength=c * c).reshape(c, c)


# ---------------------------------------------------------------- student vs teacher


def agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    """Percentage of samples on which student and teacher predict the same top-1 class."""
    same = student_logits.argmax(-1) == teacher_logits.argmax(-1)
    return 100.0 * same.double().mean().item()


def kl_teacher_student(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 1.0) -> float:
    """KL(softmax(t/T) || softmax(s/T)) summed over classes, averaged over samples (nats)."""
    log_s = F.log_softmax(student_logits.double() / T, dim=-1)
    log_t = F.log_softmax(teacher_logits.double() / T, dim=-1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean").item()


# ---------------------------------------------------------------- everything at once


def compute_metrics(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    n_bins: int = N_BINS,
) -> dict:
    """Every metric as plain Python values (JSON-ready).

    Keys: n, n_labelled, acc, top5_acc, nll, ece, per_class_acc, confusion, reliability,
    and with `teacher_logits` (same samples, same order) agreement and kl_teacher. Label
    metrics are None when no sample is labelled.
    """
    logits, labels = logits.float().cpu(), labels.long().cpu()
    mask = labels != UNLABELLED
    z, y = logits[mask], labels[mask]
    out: dict = {"n": len(labels), "n_labelled": int(mask.sum())}
    if len(y):
        bins = calibration_bins(z, y, n_bins)
        out.update(
            acc=topk_accuracy(z, y, 1),
            top5_acc=topk_accuracy(z, y, 5),
            nll=nll(z, y),
            ece=ece_from_bins(bins),
            per_class_acc=per_class_accuracy(z, y),
            confusion=confusion_matrix(z, y).tolist(),
            reliability=bins,
        )
    else:
        out.update(dict.fromkeys(("acc", "top5_acc", "nll", "ece", "per_class_acc", "confusion", "reliability")))
    if teacher_logits is not None:
        t = teacher_logits.float().cpu()
        if t.shape != logits.shape:
            raise ValueError(f"teacher logits {tuple(t.shape)} and student logits {tuple(logits.shape)} differ in shape")
        out.update(agreement=agreement(logits, t), kl_teacher=kl_teacher_student(logits, t))
    return out


def evaluate_model(
    student: torch.nn.Module,
    loader,
    device="cpu",
    teacher: torch.nn.Module | Predictions | None = None,
    n_bins: int = N_BINS,
) -> dict:
    """`compute_metrics` of `student` over `loader`; with a teacher (a model, or its
    `collect_logits` output on the same loader) also agreement and KL(teacher || student)."""
    preds = collect_logits(student, loader, device)
    teacher_logits = None
    if teacher is not None:
        t = teacher if isinstance(teacher, Predictions) else collect_logits(teacher, loader, device)
        if not torch.equal(t.index, preds.index):
            raise ValueError("Teacher and student predictions cover different samples or orders.")
        teacher_logits = t.logits
    return compute_metrics(preds.logits, preds.labels, teacher_logits, n_bins)
