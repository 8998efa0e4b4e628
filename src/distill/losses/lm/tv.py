"""Total variation distance between the teacher's p and the student's q, per token.

    TV = 1/2 * sum_v |p_v - q_v|

Symmetric and bounded in [0, 1]; used for LM distillation by Wen et al. 2023 ("f-Divergence
Minimization for Sequence-Level Knowledge Distillation") and DistillKit.
"""

from __future__ import annotations

from .common import TokenTerm


def total_variation(student, teacher):
    """Per-row 1/2 sum |p - q| from log q (`student`) and log p (`teacher`)."""
    return 0.5 * (teacher.exp() - student.exp()).abs().sum(-1)


class TV(TokenTerm):
    cite = "Wen, Li, Du & Mou 2023, f-Divergence Minimization for Sequence-Level KD"

    def per_token(self, student, teacher):
        return total_variation(student, teacher)
