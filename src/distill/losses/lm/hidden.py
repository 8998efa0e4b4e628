"""Hidden-state terms for causal language models (`type: lm_hidden`): the student's intermediate
representations pulled towards the teacher's, layer by mapped layer, at every counted position.

    lm_hidden = sum over mapped pairs (m, n) of  mean over counted rows t of  D(W_mn h_S^m[t] + b_mn, h_T^n[t])

    D = mse:     1/d_t * sum_j (x_j - y_j)^2                       (TinyBERT eq. 7, FitNets)
    D = cosine:  1 - x.y / (|x| |y|)                               (DistilBERT's cosine loss)

h^m[t] is the output of decoder layer m at position t, [d] wide; the rows t are the positions
whose next token is a target, the rows the token terms read (not padding, not masked prompt
tokens; the last prompt position, which predicts the first completion token, counts). W_mn is
a learned Linear(d_s, d_t) with a bias, one per mapped pair, initialised as TinyBERT's fit_dense
(N(0, 0.02), bias 0) and present also for equal widths (the paper's W_h is a learned matrix
whatever the widths).

Layer map (`layers`, the key tinybert_hidden uses): "uniform" (the default, TinyBERT's
g(m) = m * N / M for a teacher depth N that is a multiple of the student's M), "last" ([[M, N]]),
explicit [student_layer, teacher_layer] pairs (1-based: layer m is the m-th decoder block's
output, e.g. GPT-2's transformer.h.<m-1>, Llama's model.layers.<m-1>; before the final norm), or
a mapping {student module path: teacher module path} for any modules of the two models. The LM
part resolves the map against the models (distill.lm.features).

Sums and means, as tinybert_hidden: the pairs are summed (divide the weight by their number for
a per-layer average); the rows are averaged like the token terms, `per_token` giving one value
per row and the LM part dividing the batch's sum by its counted tokens, so gradient
accumulation and torchrun re-weighting stay exact. One projector per pair, not TinyBERT's one
shared fit_dense: a decoder's residual stream changes scale and basis from layer to layer.
Teacher states are fixed targets (no gradient); everything is computed in fp32, autocast off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..common import fp32_region
from ..tinybert import tinybert_projection
from ..transformer import check_layer_map

DISTANCES = ("mse", "cosine")
COSINE_EPS = 1e-8  # F.cosine_similarity's default: a zero vector gives cosine 0, not NaN


def hidden_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per row of [M, d]: the mean over the d units of (prediction - target)^2."""
    return (prediction.float() - target.detach().float()).pow(2).mean(-1)


def hidden_cosine(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per row of [M, d]: 1 - cosine similarity of prediction and target."""
    return 1.0 - F.cosine_similarity(prediction.float(), target.detach().float(), dim=-1, eps=COSINE_EPS)


def check_path_map(layers: dict) -> tuple[tuple[str, str], ...]:
    """{student path: teacher path} as (student, teacher) pairs; a ValueError otherwise."""
    pairs = tuple(layers.items())
    if not pairs or not all(isinstance(p, str) and p for pair in pairs for p in pair):
        raise ValueError(f"layers as a mapping must name module paths, {{student path: teacher path}}, "
                         f"e.g. {{transformer.h.0: transformer.h.1}} (got {layers!r})")
    return pairs


class LMHidden(nn.Module):
    """Hidden-state MSE or cosine between mapped decoder layers, through learned projections."""

    cite = "Jiao et al. 2020, TinyBERT (eq. 7); Sanh et al. 2019, DistilBERT (cosine)"

    def __init__(self, layers="uniform", loss: str = "mse"):
        super().__init__()
        if loss not in DISTANCES:
            raise ValueError(f"loss must be 'mse' or 'cosine' (got {loss!r})")
        self.loss = loss
        self.layers = check_path_map(layers) if isinstance(layers, dict) else check_layer_map(layers)
        self.pairs: tuple[tuple[str, str], ...] = ()  # (student path, teacher path)
        self.student_layers: tuple[str, ...] = ()
        self.teacher_layers: tuple[str, ...] = ()
        self.projectors: nn.ModuleList | None = None

    def map_paths(self, pairs: tuple[tuple[str, str], ...]) -> None:
        """Declare the resolved (student path, teacher path) pairs (distill.lm.features)."""
        self.pairs = tuple(pairs)
        self.student_layers = tuple(dict.fromkeys(s for s, _ in self.pairs))
        self.teacher_layers = tuple(dict.fromkeys(t for _, t in self.pairs))

    def setup(self, student_shapes: dict[str, tuple], teacher_shapes: dict[str, tuple]) -> None:
        """One Linear(d_s, d_t) per pair, from the probed [B, L, d] shapes."""
        self.projectors = nn.ModuleList(
            tinybert_projection(student_shapes[s][-1], teacher_shapes[t][-1]) for s, t in self.pairs)

    def per_token(self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> torch.Tensor:
        """One value per counted row [M]: the sum over pairs of D(projected student, teacher).
        `student` and `teacher` map the paths to their [M, d] rows."""
        if self.projectors is None:
            raise RuntimeError("LMHidden.setup() was not called: the projections do not exist yet")
        distance = hidden_mse if self.loss == "mse" else hidden_cosine
        first = student[self.pairs[0][0]]
        with fp32_region(first):
            total = first.new_zeros(first.shape[0], dtype=torch.float32)
            for (s, t), projector in zip(self.pairs, self.projectors, strict=True):
                total = total + distance(projector(student[s].float()), teacher[t])
        return total

    def forward(self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.per_token(student, teacher)

    def extra_repr(self) -> str:
        return f"layers={self.layers!r}, loss={self.loss!r}, pairs={list(self.pairs)!r}"
