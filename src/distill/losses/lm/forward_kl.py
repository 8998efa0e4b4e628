"""Forward KL, KL(p || q): the teacher's distribution p against the student's q, per token.

    FKL = sum_v p_v (log p_v - log q_v)

Mode-covering: the student is pushed to put mass wherever the teacher does. This is token-level
Hinton KD (Kim & Rush 2016, "Sequence-Level Knowledge Distillation", word-level KD) and the
beta -> 0 end of GKD's generalized JSD (Agarwal et al. 2024).
"""

from __future__ import annotations

from .common import TokenTerm, xlogy_ratio


def forward_kl(student, teacher):
    """Per-row KL(p || q) from log q (`student`) and log p (`teacher`)."""
    return xlogy_ratio(teacher, student)


class ForwardKL(TokenTerm):
    cite = "Kim & Rush 2016, Sequence-Level Knowledge Distillation (word-level KD)"

    def per_token(self, student, teacher):
        return forward_kl(student, teacher)
