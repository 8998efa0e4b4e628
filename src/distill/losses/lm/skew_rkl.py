"""Skew reverse KL with weight lambda (Ko et al. 2024, DistiLLM, eq. 4).

    SRKL_lambda = KL(q || lambda * q + (1 - lambda) * p)

p is the teacher, q the student: the reverse KL with a little of the student mixed into the
teacher's side, bounding the term where the teacher gives a token almost no mass. lambda = 0.1
is the paper's default; lambda -> 0 recovers the reverse KL. DistiLLM's code computes exactly
this sum, -sum q (log mix - log q).
"""

from __future__ import annotations

from .common import TokenTerm, check_fraction, log_mix, xlogy_ratio


def skew_reverse_kl(student, teacher, lam: float = 0.1):
    """Per-row KL(q || lam q + (1 - lam) p) from log q (`student`) and log p (`teacher`)."""
    return xlogy_ratio(student, log_mix(student, teacher, lam))


class SkewReverseKL(TokenTerm):
    cite = "Ko, Kim, Chen & Yun 2024, DistiLLM: Towards Streamlined Distillation for LLMs"

    def __init__(self, lam: float = 0.1, T: float = 1.0):
        super().__init__(T)
        self.lam = check_fraction("lam", lam, "DistiLLM's default is 0.1")

    def per_token(self, student, teacher):
        return skew_reverse_kl(student, teacher, self.lam)
