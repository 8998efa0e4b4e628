"""Skew KL with weight lambda (Ko et al. 2024, DistiLLM, eq. 3).

    SKL_lambda = KL(p || lambda * p + (1 - lambda) * q)

p is the teacher, q the student. Mixing a little of p into the student's side keeps the
divergence and its gradient bounded where q is tiny (by 1/lambda: log(1/lambda) per token at
most), which the paper shows stabilises training. lambda = 0.1 is the paper's default;
lambda -> 0 recovers the forward KL. DistiLLM's code computes the cross-entropy
-sum p log(mix), which differs from this by the teacher's entropy: the same gradient, but here
the value is 0 when the student equals the teacher.
"""

from __future__ import annotations

from .common import TokenTerm, check_fraction, log_mix, xlogy_ratio


def skew_kl(student, teacher, lam: float = 0.1):
    """Per-row KL(p || lam p + (1 - lam) q) from log q (`student`) and log p (`teacher`)."""
    return xlogy_ratio(teacher, log_mix(teacher, student, lam))


class SkewKL(TokenTerm):
    cite = "Ko, Kim, Chen & Yun 2024, DistiLLM: Towards Streamlined Distillation for LLMs"

    def __init__(self, lam: float = 0.1, T: float = 1.0):
        super().__init__(T)
        self.lam = check_fraction("lam", lam, "DistiLLM's default is 0.1")

    def per_token(self, student, teacher):
        return skew_kl(student, teacher, self.lam)
