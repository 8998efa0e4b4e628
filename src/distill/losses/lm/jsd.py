"""Generalized Jensen-Shannon divergence with weight beta (Agarwal et al. 2024, GKD, eq. 3).

    M     = beta * p + (1 - beta) * q
    JSD_b = beta * KL(p || M) + (1 - beta) * KL(q || M)

p is the teacher, q the student. beta = 0.5 is the symmetric JSD (GKD's and TRL's default).
JSD_b / beta tends to KL(p || q) as beta -> 0 and JSD_b / (1 - beta) to KL(q || p) as beta -> 1;
those ends are the forward_kl and reverse_kl terms, so beta here is strictly between 0 and 1
(at the ends JSD_b itself is 0 whatever the student does). The mixture is formed in log space.
"""

from __future__ import annotations

from .common import TokenTerm, check_fraction, log_mix, xlogy_ratio


def generalized_jsd(student, teacher, beta: float = 0.5):
    """Per-row JSD_beta from log q (`student`) and log p (`teacher`)."""
    mix = log_mix(teacher, student, beta)
    return beta * xlogy_ratio(teacher, mix) + (1 - beta) * xlogy_ratio(student, mix)


class JSD(TokenTerm):
    cite = "Agarwal et al. 2024, On-Policy Distillation of Language Models (GKD)"

    def __init__(self, beta: float = 0.5, T: float = 1.0):
        super().__init__(T)
        self.beta = check_fraction("beta", beta, "use forward_kl for beta -> 0, reverse_kl for beta -> 1")

    def per_token(self, student, teacher):
        return generalized_jsd(student, teacher, self.beta)
