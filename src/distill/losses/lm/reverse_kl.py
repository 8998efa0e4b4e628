"""Reverse KL, KL(q || p): the student's distribution q against the teacher's p, per token.

    RKL = sum_v q_v (log q_v - log p_v)

Mode-seeking: the student is penalised for mass where the teacher has little, so a small
student concentrates on the teacher's main modes (Gu et al. 2024, MiniLLM; the beta -> 1 end of
GKD's generalized JSD).
"""

from __future__ import annotations

from .common import TokenTerm, xlogy_ratio


def reverse_kl(student, teacher):
    """Per-row KL(q || p) from log q (`student`) and log p (`teacher`)."""
    return xlogy_ratio(student, teacher)


class ReverseKL(TokenTerm):
    cite = "Gu, Dong, Wei & Huang 2024, MiniLLM: Knowledge Distillation of Large Language Models"

    def per_token(self, student, teacher):
        return reverse_kl(student, teacher)
