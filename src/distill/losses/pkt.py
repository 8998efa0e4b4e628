"""Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer",
ECCV 2018 (arXiv:1803.10837).

PKT matches the *conditional probability distributions* that each sample induces over the
other samples of the batch, measured with a cosine-similarity kernel, so student and teacher
widths may differ and no projector is needed. With features flattened per sample:

    x_i  = f_i / ||f_i||_2                              (L2-normalized, a zero row stays zero)
    K_ij = (x_i . x_j + 1) / 2                          (cosine similarity shifted to [0, 1])
    P_ij = K_ij / sum_k K_ik                            (each row normalized to sum 1)
    PKT  = (1/B) sum_i sum_j P_t[i,j] * log((P_t[i,j] + eps) / (P_s[i,j] + eps))

i.e. KL(teacher row || student row) for every sample, averaged over the B samples.

Paper defaults: the cosine kernel (the paper's recommended, parameter-free choice); eps = 1e-7
(authors' code). The paper has no other hyper-parameter; the term has none but its layers.

Paper vs reference. (1) The paper excludes k = i from the row sums (p_{j|i} over j != i); the
authors' code, which RepDistiller copies, keeps the diagonal (K_ii = 1) in every row. We follow
the code: it is what the published results were produced with. (2) The paper writes a sum over
all (i, j); the authors' code takes the *mean* over all B*B entries, which is our value divided
by B. We take the per-sample mean of the per-row KL instead: unlike either, it does not change
with the batch size (repeating a batch gives the same value), which keeps the term's weight
meaningful across batch sizes. To reuse a weight tuned with the reference code (RepDistiller
uses 30000 at batch size 64) divide it by the batch size it was tuned at (30000 / 64 ~ 469).
(3) eps is added inside the log (as the code does) and to the norms; it only matters for
all-zero features.

The teacher side is detached. All arithmetic is in fp32, with autocast switched off inside
the term, so mixed precision does not reach the loss.
"""

from __future__ import annotations

import torch

from .common import LayerPair, check_same_batch, fp32_region


def _conditional_probabilities(f: torch.Tensor, eps: float) -> torch.Tensor:
    x = f.reshape(f.shape[0], -1).float()
    x = x / (x.norm(dim=1, keepdim=True) + eps)
    x = torch.nan_to_num(x, nan=0.0)  # a zero row with eps = 0
    k = (x @ x.t() + 1.0) / 2.0
    return k / k.sum(dim=1, keepdim=True)


def pkt_loss(f_s: torch.Tensor, f_t: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Mean over samples of KL(P_teacher[i] || P_student[i]) with the cosine kernel.

    `f_s` (B, ...) and `f_t` (B, ...) are flattened per sample and may differ in width.
    """
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0 (got {eps}); the authors use 1e-7")
    check_same_batch(f_s, f_t)
    with fp32_region(f_s):
        p_s = _conditional_probabilities(f_s, eps)
        p_t = _conditional_probabilities(f_t.detach(), eps)
        terms = p_t * torch.log((p_t + eps) / (p_s + eps))
        terms = torch.where(p_t > 0, terms, torch.zeros_like(terms))  # 0 log 0 = 0
        return terms.sum() / p_s.shape[0]


class PKT(LayerPair):
    """Probabilistic knowledge transfer between one student and one teacher layer."""

    cite = (
        "Passalis & Tefas 2018, Learning Deep Representations with Probabilistic Knowledge "
        "Transfer (ECCV)"
    )

    def forward(self, student, teacher, batch) -> torch.Tensor:
        return pkt_loss(student.features[self.student], teacher.features[self.teacher])
