"""Jiao et al., "TinyBERT: Distilling BERT for Natural Language Understanding", Findings of
EMNLP 2020 (arXiv:1909.10351): the hidden-state (eq. 7) and embedding (eq. 9) losses.

    tinybert_hidden     = sum over mapped pairs (m, n) of  MSE_real(H_S^m W_h + b_h, H_T^n)
    tinybert_embedding  = MSE_real(E_S W_e + b_e, E_T)

    MSE_real(X, Y) = 1 / (n_real * d_t) * sum over real tokens (b, l) of sum_j (X[b,l,j] - Y[b,l,j])^2

H^m is the output of transformer layer m (tap `hidden.<m>`, [B, L, d]), E the embedding layer's
output (tap `embeddings`), n_real the number of real (non-padding) tokens in the batch
(`batch.mask`; without a mask every position counts) and d_t the teacher's width. W_h and W_e
are learned linear projections d_s -> d_t, sized at setup from the probed shapes.

Layer map (`layers`): "uniform" (the default, the paper's g(m) = m * N / M: student layer m
learns from teacher layer m * N / M, for a teacher depth N that is a multiple of the student's
M), "last" ([[M, N]]) or explicit [student_layer, teacher_layer] pairs, 1-based. The task
resolves it once the depths are known (`map_layers`).

Paper, reference code (huawei-noah/Pretrained-Language-Model, TinyBERT/task_distill.py and
general_distill.py) and here:
- Projection. The reference gives the student one `fit_dense = nn.Linear(d_s, 768)` (with a
  bias, BERT's init N(0, 0.02)) and applies it to every student representation, even when
  d_s == d_t (TinyBERT-6L-768D has a 768 -> 768 fit_dense). We do the same within a term: one
  Linear with a bias, N(0, 0.02) weights and a zero bias, shared by all mapped layers
  (tinybert_hidden), always present, also for equal widths (the paper's W_h is a learned matrix
  whatever the widths). The embedding term has its own projection, the paper's separate W_e
  (eq. 9); the reference shares fit_dense between the embeddings and the hidden states.
- Sum over layers. Paper (L_model = sum_m lambda_m L_layer, lambda = 1) and reference
  (`rep_loss += loss_mse(...)` per layer) both sum: the value grows with the number of mapped
  pairs. So do we; divide the weight by the number of pairs for a per-layer average. The
  reference's rep_loss also holds the embedding pair; here that is the separate
  tinybert_embedding term (weight both 1 to get the reference's sum).
- Normalisation. The reference's MSELoss is the mean over all B * L * d_t elements, padding
  included. Here the mean is over the real tokens (and the d_t units) only: a padded position's
  hidden state is computed (its query attends to the real tokens) but no real token attends to
  it and the classifier never reads it, so fitting it spends the student's capacity on outputs
  nothing depends on, and it would make a sentence's weight depend on how much padding its
  batch has. Without padding (or with mask None) the two are identical. A padded position's
  content changes neither the value nor the gradient.

Teacher features are fixed targets (no gradient); everything is computed in fp32, autocast off.
Labels are not used; unlabelled rows count like any other.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import fp32_region
from .transformer import (
    MappedLayers,
    masked_token_mse,
    real_tokens,
    resolve_layer_map,
    token_width,
    zero_padding,
)

INIT_STD = 0.02  # BERT's initializer_range, which the reference's fit_dense is initialised with


def tinybert_projection(d_s: int, d_t: int) -> nn.Linear:
    """The reference's fit_dense: Linear(d_s, d_t) with a bias, weights N(0, 0.02), bias 0."""
    linear = nn.Linear(d_s, d_t)
    nn.init.normal_(linear.weight, std=INIT_STD)
    nn.init.zeros_(linear.bias)
    return linear


class TinyBERTHidden(MappedLayers):
    """TinyBERT's hidden-state loss over mapped layers, through one learned projection W_h."""

    cite = "Jiao et al. 2020, TinyBERT: Distilling BERT for Natural Language Understanding (eq. 7)"
    tap = "hidden"

    def __init__(self, layers="uniform"):
        super().__init__(layers)
        self.projector: nn.Linear | None = None

    def setup(self, student_shapes: dict[str, tuple], teacher_shapes: dict[str, tuple]) -> None:
        pairs = self.path_pairs()
        d_s = token_width(student_shapes, [s for s, _ in pairs], "student", "tinybert_hidden")
        d_t = token_width(teacher_shapes, [t for _, t in pairs], "teacher", "tinybert_hidden")
        self.projector = tinybert_projection(d_s, d_t)

    def forward(self, student, teacher, batch) -> torch.Tensor:
        pairs = self.path_pairs()
        if self.projector is None:
            raise RuntimeError("TinyBERTHidden.setup() was not called: the projection W_h does not exist yet")
        real = real_tokens(batch.mask, student.features[pairs[0][0]])
        return self.summed(student, teacher, lambda h_s, h_t, *_: masked_token_mse(
            self.projector(zero_padding(h_s.float(), real)), h_t, real))


class TinyBERTEmbedding(nn.Module):
    """TinyBERT's embedding-layer loss, through its own learned projection W_e."""

    cite = "Jiao et al. 2020, TinyBERT: Distilling BERT for Natural Language Understanding (eq. 9)"
    tap = "embeddings"

    def __init__(self):
        super().__init__()
        self.student_layers: tuple[str, ...] = (self.tap,)
        self.teacher_layers: tuple[str, ...] = (self.tap,)
        self.projector: nn.Linear | None = None

    def map_layers(self, student_depth: int, teacher_depth: int) -> None:
        """Nothing to map (the embeddings are one layer on each side); checks the depths only,
        so that every transformer term takes the same call."""
        resolve_layer_map("last", student_depth, teacher_depth)

    def setup(self, student_shapes: dict[str, tuple], teacher_shapes: dict[str, tuple]) -> None:
        d_s = token_width(student_shapes, [self.tap], "student", "tinybert_embedding")
        d_t = token_width(teacher_shapes, [self.tap], "teacher", "tinybert_embedding")
        self.projector = tinybert_projection(d_s, d_t)

    def forward(self, student, teacher, batch) -> torch.Tensor:
        if self.projector is None:
            raise RuntimeError("TinyBERTEmbedding.setup() was not called: the projection W_e does not exist yet")
        e_s = student.features[self.tap]
        real = real_tokens(batch.mask, e_s)
        with fp32_region(e_s):
            return masked_token_mse(self.projector(zero_padding(e_s.float(), real)), teacher.features[self.tap], real)
