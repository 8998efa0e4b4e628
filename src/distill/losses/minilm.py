"""Wang et al., "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of
Pre-Trained Transformers", NeurIPS 2020 (arXiv:2002.10957): self-attention distribution
transfer (eq. 1) and value-relation transfer (eq. 2-3).

    minilm_attention = sum over mapped pairs (m, n) of  KL_real(A_T^n || A_S^m)
    minilm_value     = sum over mapped pairs (m, n) of  KL_real(VR_T^n || VR_S^m)

    VR_a   = softmax(V_a V_a^T / sqrt(d_head)) over the real keys, per head a   [L x L]
    KL_real(P || Q) = 1 / (A_h * n_real) * sum over heads a, real query positions (b, t) of
                      sum over keys k of P[b,a,t,k] * (log P[b,a,t,k] - log Q[b,a,t,k])

A is a layer's attention probabilities after the softmax (tap `attention.<i>`, [B, heads, L,
L]); V its value projection's output (tap `values.<i>`, [B, L, heads * d_head]) split into
`heads` heads of d_head = d / heads; A_h the head count; n_real the number of real (non-
padding) query positions in the batch (`batch.mask`; without a mask every position counts).

Layer map (`layers`): "last" (the default, the paper's choice: the student's last layer M
learns from the teacher's last layer N), "uniform" (student layer m <- teacher layer m * N / M)
or explicit [student_layer, teacher_layer] pairs, 1-based; several pairs are summed, like
TinyBERT's layers. The task resolves the map once the depths are known (`map_layers`).

Heads. minilm_attention needs the two models to have the same number of attention heads (a
clear error at setup names both). minilm_value splits both models' values into the same number
of heads, `heads`; the widths may differ (d_head = d / heads on each side), since VR is L x L
whatever d_head is. With `heads=None` (the default) it is the models' attention head count
(equal on both sides), read at setup from the shapes of the mapped layers' `attention.<i>`
maps: the term hooks them too, though forward never reads them. That is free beside a
minilm_attention term on the same layers (the paper uses both: the maps are captured once),
but alone it makes the models return attention maps and a teacher cache store them; set
`heads` (the models' num_attention_heads) to avoid that. An explicit `heads` other than the
attention heads is MiniLMv2's "relation heads" (Wang et al. 2021).

Paper vs. here:
- Normalisation. The paper averages the KL over the heads and the |x| positions of one
  sequence, unpadded. Here the batch's real query positions are pooled: the mean is over all
  real tokens of the batch (so each real token weighs the same, as in the TinyBERT terms),
  which is the paper's per-sequence value averaged over sequences when they have equal length.
  Padded query rows are left out (their content, even NaN, changes neither the value nor the
  gradient); padded keys are left out of the value relation's softmax. In the attention maps
  the model has already given padded keys probability 0 (a Hugging Face model masks them), and
  a key where the teacher's probability is 0 adds nothing to the KL.
- The student's attention probabilities are clamped at the smallest normal fp32 number before
  the log, so a probability that underflowed to 0 where the teacher's is not gives a large,
  finite KL instead of infinity.
- MiniLM's official repository (microsoft/unilm, minilm/) releases models, not distillation
  code; these terms follow the paper's equations.

Teacher features are fixed targets (no gradient); everything is computed in fp32, autocast off.
Labels are not used; unlabelled rows count like any other.
"""

from __future__ import annotations

import math

import torch

from ..errors import DistillError
from .common import feature_shape
from .transformer import MappedLayers, real_tokens, row_kl, token_width

TINY = torch.finfo(torch.float32).tiny  # the floor of the student's attention probabilities
NEG = torch.finfo(torch.float32).min  # a padded key's score: finite, so no row is ever all -inf


def attention_shape(shapes: dict, path: str, role: str) -> tuple:
    """The probed (B, heads, L, L) shape of attention probabilities at `path`."""
    shape = feature_shape(shapes, path, role)
    if len(shape) != 4 or shape[2] != shape[3]:
        raise ValueError(
            f"minilm_attention reads attention probabilities (batch, heads, L, L); the {role}'s "
            f"'{path}' has shape {shape}. Use a text classifier's attention.<i> taps"
        )
    return shape


def check_same_heads(s_heads: int, t_heads: int, s_path: str, t_path: str, term: str) -> None:
    if s_heads != t_heads:
        raise ValueError(
            f"{term} compares attention per head and needs equal head counts; the student's "
            f"'{s_path}' has {s_heads} heads and the teacher's '{t_path}' {t_heads}. Give the "
            f"student num_attention_heads={t_heads}, or use another term (e.g. tinybert_hidden)"
        )


def attention_kl(a_s: torch.Tensor, a_t: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """KL(A_T || A_S) of attention probabilities [B, heads, L, L], averaged over the heads and
    the real query positions (fp32; the teacher's is a fixed target)."""
    if a_s.shape != a_t.shape:
        raise ValueError(
            f"minilm_attention needs attention maps of equal shape; got student {tuple(a_s.shape)} "
            f"and teacher {tuple(a_t.shape)}"
        )
    a_s, a_t = a_s.float(), a_t.detach().float()
    if real is not None:  # padded query rows: any value that keeps the log finite (row_kl drops them)
        rows = real[:, None, :, None]
        a_s, a_t = torch.where(rows, a_s, 1.0), torch.where(rows, a_t, 1.0)
    log_p_t = a_t.log()  # log 0 = -inf: such keys add nothing
    log_p_s = a_s.clamp_min(TINY).log()
    return row_kl(log_p_t, log_p_s, real)


def check_distributions(a_s: torch.Tensor, real: torch.Tensor | None, path: str) -> None:
    """A DistillError unless the student's real query rows sum to 1. Run once, on the first
    training step (it reads a value back from the device): a model that applies attention
    dropout before the tap hands over rows with zeros and a 1 / (1 - p) scale, on which the KL
    is large and meaningless (a dropped key gives p_t * log(p_t / tiny))."""
    sums = a_s.detach().float().sum(-1)  # [B, heads, L]
    if real is not None:
        sums = torch.where(real[:, None, :], sums, 1.0)
    sums = sums.flatten()
    worst = sums[(sums - 1).abs().argmax()].item()
    if abs(worst - 1) > 1e-3:
        raise DistillError(
            f"minilm_attention: the student's '{path}' rows are not probability distributions in "
            f"training mode (a row sums to {worst:.4g}, not 1): the model "
            "applies attention dropout before this tap. Turn the student's attention dropout off "
            "(e.g. student.kwargs.attention_probs_dropout_prob=0.0) or tap the probabilities "
            "before dropout"
        )


def value_relation(v: torch.Tensor, heads: int, real: torch.Tensor | None) -> torch.Tensor:
    """log VR: log softmax(V_a V_a^T / sqrt(d_head)) per head a, padded keys left out of the
    softmax. v: [B, L, heads * d_head] -> [B, heads, L, L], in fp32."""
    b, length, width = v.shape
    d_head = width // heads
    v = v.float().reshape(b, length, heads, d_head).transpose(1, 2)  # [B, heads, L, d_head]
    if real is not None:
        v = torch.where(real[:, None, :, None], v, 0.0)  # a padded token's values are irrelevant
    scores = v @ v.transpose(-1, -2) / math.sqrt(d_head)
    if real is not None:
        scores = scores.masked_fill(~real[:, None, None, :], NEG)
    return scores.log_softmax(dim=-1)


def value_relation_kl(v_s: torch.Tensor, v_t: torch.Tensor, heads: int, real: torch.Tensor | None) -> torch.Tensor:
    """KL(VR_T || VR_S) averaged over the heads and the real query positions (fp32)."""
    if v_s.shape[:2] != v_t.shape[:2]:
        raise ValueError(
            f"minilm_value needs the same (batch, sequence) sizes; got student {tuple(v_s.shape)} "
            f"and teacher {tuple(v_t.shape)}"
        )
    return row_kl(value_relation(v_t.detach(), heads, real), value_relation(v_s, heads, real), real)


class MiniLMAttention(MappedLayers):
    """MiniLM's self-attention distribution transfer, KL(A_T || A_S) per head and query."""

    cite = "Wang et al. 2020, MiniLM: Deep Self-Attention Distillation (NeurIPS), eq. 1"
    tap = "attention"

    def __init__(self, layers="last"):
        super().__init__(layers)
        self.checked = False  # whether a training step's student maps were checked (once)

    def setup(self, student_shapes: dict[str, tuple], teacher_shapes: dict[str, tuple]) -> None:
        for s_path, t_path in self.path_pairs():
            s_shape = attention_shape(student_shapes, s_path, "student")
            t_shape = attention_shape(teacher_shapes, t_path, "teacher")
            check_same_heads(s_shape[1], t_shape[1], s_path, t_path, "minilm_attention")

    def forward(self, student, teacher, batch) -> torch.Tensor:
        pairs = self.path_pairs()
        first = student.features[pairs[0][0]]  # [B, heads, L, L]
        real = real_tokens(batch.mask, first.transpose(1, 2), "attention maps")

        def pair_kl(a_s, a_t, s_path, t_path):
            check_same_heads(a_s.shape[1], a_t.shape[1], s_path, t_path, "minilm_attention")
            if self.training and not self.checked:
                check_distributions(a_s, real, s_path)
            return attention_kl(a_s, a_t, real)

        total = self.summed(student, teacher, pair_kl)
        self.checked = self.checked or self.training
        return total


class MiniLMValue(MappedLayers):
    """MiniLM's value-relation transfer, KL(VR_T || VR_S) per head and query."""

    cite = "Wang et al. 2020, MiniLM: Deep Self-Attention Distillation (NeurIPS), eq. 2-3"
    tap = "values"

    def __init__(self, layers="last", heads: int | None = None):
        super().__init__(layers)
        if heads is not None and (not isinstance(heads, int) or isinstance(heads, bool) or heads < 1):
            raise ValueError(f"heads must be a number of heads >= 1, or None to read it from the attention maps "
                             f"(got {heads!r})")
        self.heads = heads
        self.split: int | None = None  # the head count in use, fixed at setup

    def map_layers(self, student_depth: int, teacher_depth: int) -> None:
        """The value taps of the mapped layers; with heads=None also their attention taps,
        whose probed shapes give the head count at setup (forward does not read them)."""
        super().map_layers(student_depth, teacher_depth)
        if self.heads is None:
            self.student_layers += tuple(dict.fromkeys(f"attention.{s}" for s, _ in self.pairs))
            self.teacher_layers += tuple(dict.fromkeys(f"attention.{t}" for _, t in self.pairs))

    def _heads_from_attention(self, student_shapes: dict, teacher_shapes: dict) -> int:
        counts = set()
        for s, t in self.pairs:
            s_path, t_path = f"attention.{s}", f"attention.{t}"
            s_heads = attention_shape(student_shapes, s_path, "student")[1]
            t_heads = attention_shape(teacher_shapes, t_path, "teacher")[1]
            check_same_heads(s_heads, t_heads, s_path, t_path, "minilm_value (heads=None)")
            counts.add(s_heads)
        if len(counts) != 1:
            raise ValueError(f"minilm_value: the mapped layers have different head counts ({sorted(counts)}); "
                             "set heads")
        return counts.pop()

    def setup(self, student_shapes: dict[str, tuple], teacher_shapes: dict[str, tuple]) -> None:
        pairs = self.path_pairs()
        heads = self.heads if self.heads is not None else self._heads_from_attention(student_shapes, teacher_shapes)
        widths = {"student": token_width(student_shapes, [s for s, _ in pairs], "student", "minilm_value"),
                  "teacher": token_width(teacher_shapes, [t for _, t in pairs], "teacher", "minilm_value")}
        for role, width in widths.items():
            if width % heads:
                raise ValueError(
                    f"minilm_value splits the values into {heads} heads, but the {role}'s values are "
                    f"{width} wide, not a multiple of {heads}. Set heads to a common divisor of the "
                    f"widths ({widths['student']} and {widths['teacher']}), e.g. the models' "
                    "num_attention_heads"
                )
        self.split = heads

    def forward(self, student, teacher, batch) -> torch.Tensor:
        pairs = self.path_pairs()
        if self.split is None:
            raise RuntimeError("MiniLMValue.setup() was not called: the head count is not fixed yet")
        real = real_tokens(batch.mask, student.features[pairs[0][0]])
        return self.summed(student, teacher, lambda v_s, v_t, *_: value_relation_kl(v_s, v_t, self.split, real))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, heads={self.heads!r}"
