"""Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019 (arXiv:1904.05068).

RKD transfers the *relations* between the samples of a batch rather than the features
themselves. Features are flattened per sample (e_i = flatten(feature_i)); the potentials below
depend only on distances and angles, so student and teacher widths may differ and no
projector is needed.

    distance potential   psi_D(i, j) = ||e_i - e_j||_2 / mu,
                         mu = mean of ||e_i - e_j||_2 over the pairs with a positive distance
    angle potential      psi_A(i, j, k) = <u_ji, u_ki>,   u_ji = (e_j - e_i) / ||e_j - e_i||_2
                         (cosine of the angle at vertex i; 0 when e_j = e_i or e_k = e_i)

    L_D = mean over all B*B pairs    of huber(psi_D(student) - psi_D(teacher))
    L_A = mean over all B*B*B triples of huber(psi_A(student) - psi_A(teacher))
    RKD = distance_weight * L_D + angle_weight * L_A
    huber(x) = 0.5 x^2 if |x| <= 1 else |x| - 0.5          (smooth L1, delta = 1)

Paper defaults: lambda_D = 25 (distance), lambda_A = 50 (angle), delta = 1; these are the
method's internal balance and are this term's constructor defaults. The config weight of the
term multiplies the whole sum, as for every term.

Paper vs reference. The paper writes the losses as sums over distinct pairs / triplets; the
authors' code (and RepDistiller, whose w_d = 25, w_a = 50 match the paper) takes the *mean*
over all B^2 pairs and B^3 triplets, degenerate ones included (they contribute 0 on both
sides), and normalizes by the mean of the positive distances. We follow the reference: that
keeps the scale independent of the batch size (repeating a batch gives the same value), and
it is the scale the published weights were tuned for.

Implementation. Distances come from `torch.cdist` in its exact (difference-based) mode, in
row chunks that bound the B x B x D buffer its CUDA backward allocates (D = flattened width).
The angle cosines come from the difference vectors, as in the reference (RepDistiller's
RKDLoss normalizes e_j - e_i and takes inner products by a batched matmul): here the inner
products <e_j - e_i, e_k - e_i> of the raw differences (one batched matmul per block of
vertices i) divided by ||e_j - e_i|| ||e_k - e_i||, read off the same products' diagonal;
that is the same value without a normalizing pass over the differences. The law of cosines
on the distances, (d_ij^2 + d_ik^2 - d_jk^2) / (2 d_ij d_ik), avoids the B x B x D
differences but loses accuracy in fp32 on wide features: on 64 x 2048 features with a common
offset of 100 it is off from float64 by up to 8e-7 (value) and 6e-6 (gradient, relative
norm), against below 7e-8 and 6e-7 for the difference form (tests/losses/test_rkd.py). The
price is the reference's: O(B^3 D) multiply-adds instead of O(B^2 D + B^3) (on one CPU
thread, B = 64, D = 2048: 0.8 s against 0.1 s forward + backward). To bound memory, the
differences are formed for a block of vertices at a time (about _ANGLE_CHUNK elements); with
more than one block, each is recomputed in backward (activation checkpointing) instead of
storing B x B x D tensors. The angle term still holds a few B^3 tensors (about 0.5 GB each at
B = 512). Teacher potentials are computed without gradient. All arithmetic is in fp32, with
autocast switched off inside the term, so mixed precision does not reach the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .common import LayerPair, check_same_batch, fp32_region

# Elements of the (rows x B x D) buffer that cdist's backward allocates on CUDA, per chunk of rows.
_CDIST_CHUNK = 1 << 25
# Elements of one (vertices x B x D) block of difference vectors in the angle potential.
_ANGLE_CHUNK = 1 << 25


def _distances(e: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances (B, B) of the flattened rows of e, exact zeros on ties.

    Computed from the differences (cdist's exact mode), not from a Gram matrix, so close pairs
    keep their accuracy; rows are taken in chunks so that the backward pass's B x B x D work
    buffer never exceeds _CDIST_CHUNK elements.
    """
    e = e.reshape(e.shape[0], -1).float()
    n, width = e.shape
    rows = max(1, _CDIST_CHUNK // max(1, n * width))
    mode = "donot_use_mm_for_euclid_dist"
    if rows >= n:
        return torch.cdist(e, e, p=2.0, compute_mode=mode)
    return torch.cat(
        [torch.cdist(e[i : i + rows], e, p=2.0, compute_mode=mode) for i in range(0, n, rows)]
    )


def _distance_potential(d: torch.Tensor) -> torch.Tensor:
    positive = d[d > 0]
    if positive.numel() == 0:  # every sample identical (or B = 1): no relation to transfer
        return d
    return d / positive.mean()


def _angle_block(e: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """[i - start, j, k] = <u_ji, u_ki> for the vertices i in [start, stop): (rows, B, B).

    The inner products of the raw differences e_j - e_i, divided by their norms (taken from
    the same products' diagonal), equal those of the normalized vectors without a normalizing
    pass over the (rows, B, D) differences; pairs with e_j = e_i give 0, with zero gradient.
    """
    diff = e.unsqueeze(0) - e[start:stop].unsqueeze(1)  # [i, j] = e_j - e_i
    gram = torch.bmm(diff, diff.transpose(1, 2))  # [i, j, k] = <e_j - e_i, e_k - e_i>
    sq = gram.diagonal(dim1=1, dim2=2)  # [i, j] = ||e_j - e_i||^2
    ok = sq > 0
    inv = torch.where(ok, torch.where(ok, sq, 1.0).rsqrt(), 0.0)
    return gram * inv.unsqueeze(2) * inv.unsqueeze(1)


def _angle_potential(e: torch.Tensor) -> torch.Tensor:
    """cos of the angle at vertex i of triangle (e_i, e_j, e_k), as a (B, B, B) tensor [i, j, k].

    From the normalized difference vectors (0 where e_j = e_i or e_k = e_i), a block of
    vertices at a time; blocks are recomputed in backward rather than stored.
    """
    e = e.reshape(e.shape[0], -1).float()
    n, width = e.shape
    rows = max(1, _ANGLE_CHUNK // max(1, n * width))
    if rows >= n:
        return _angle_block(e, 0, n)
    recompute = e.requires_grad and torch.is_grad_enabled()
    blocks = []
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        if recompute:
            blocks.append(checkpoint(_angle_block, e, start, stop, use_reentrant=False))
        else:
            blocks.append(_angle_block(e, start, stop))
    return torch.cat(blocks)


def _rkd(e_s, e_t, distance_weight: float, angle_weight: float) -> torch.Tensor:
    check_same_batch(e_s, e_t)
    with fp32_region(e_s):
        e_t = e_t.detach()
        loss = e_s.new_zeros((), dtype=torch.float32)
        if distance_weight:
            with torch.no_grad():
                pot_t = _distance_potential(_distances(e_t))
            pot_s = _distance_potential(_distances(e_s))
            loss = loss + distance_weight * F.smooth_l1_loss(pot_s, pot_t)
        if angle_weight:
            with torch.no_grad():
                pot_t = _angle_potential(e_t)
            loss = loss + angle_weight * F.smooth_l1_loss(_angle_potential(e_s), pot_t)
        return loss


def rkd_distance(e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
    """RKD distance loss L_D: Huber loss between mean-normalized pairwise distances."""
    return _rkd(e_s, e_t, 1.0, 0.0)


def rkd_angle(e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
    """RKD angle loss L_A: Huber loss between the cosines of all triplet angles."""
    return _rkd(e_s, e_t, 0.0, 1.0)


def rkd_loss(
    e_s: torch.Tensor,
    e_t: torch.Tensor,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
) -> torch.Tensor:
    """distance_weight * L_D + angle_weight * L_A on features flattened per sample.

    `e_s` (B, ...) and `e_t` (B, ...) may have different widths; the teacher is detached.
    A term whose weight is 0 is not computed.
    """
    return _rkd(e_s, e_t, distance_weight, angle_weight)


class RKD(LayerPair):
    """Relational KD (distance + angle potentials) between one student and one teacher layer."""

    cite = "Park, Kim, Lu & Cho 2019, Relational Knowledge Distillation (CVPR)"

    def __init__(
        self,
        student: str,
        teacher: str,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
    ):
        super().__init__(student, teacher)
        valid = distance_weight >= 0 and angle_weight >= 0
        if not valid or not (distance_weight or angle_weight):
            raise ValueError(
                "distance_weight and angle_weight must be >= 0 and not both 0 "
                f"(got {distance_weight}, {angle_weight}); the paper uses 25 and 50"
            )
        self.distance_weight = float(distance_weight)
        self.angle_weight = float(angle_weight)

    def forward(self, student, teacher, batch) -> torch.Tensor:
        f_s = student.features[self.student]
        f_t = teacher.features[self.teacher]
        return rkd_loss(f_s, f_t, self.distance_weight, self.angle_weight)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, "
            f"distance_weight={self.distance_weight}, angle_weight={self.angle_weight}"
        )
