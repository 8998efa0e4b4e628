"""Shared pieces of the token-level divergences.

Every divergence here is a function of two distributions over the same bins, given as
log-probabilities with the bins on the last axis: `student` (q) and `teacher` (p), each row one
target token. It returns one value per row; the LM distiller sums them over the counted tokens
and divides by their number. Bins are the vocabulary, or, with an offline top-k teacher, the k
stored tokens plus one bin holding the rest of the mass (see `distill.lm.chunked`).

A probability of exactly 0 contributes 0 to p*log(p/x) (its limit), never 0 * -inf = NaN, and
its gradient is 0 too. That needs the safe-where pattern: the masked entries' inputs are
replaced by finite values *before* the log ratio (and the log-space mixture), not only in the
output, because torch.where's backward still multiplies the discarded branch's local gradient
(NaN at -inf - (-inf)) by zero, and 0 * NaN = NaN. Both models giving a token logit -inf (a
banned or padding token) is the common case.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def xlogy_ratio(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """Row sums of a * (log a - log b), with a = exp(log_a) and 0 where a == 0: KL(a || b).

    Entries with a == 0 give 0 and a zero gradient to both inputs, even where log b = -inf too.
    """
    a = log_a.exp()
    live = a > 0
    safe_a = torch.where(live, log_a, 0.0)  # masked before the ratio: finite there
    safe_b = torch.where(live, log_b, 0.0)
    terms = torch.where(live, a * (safe_a - safe_b), 0.0)
    return terms.sum(-1)


def log_mix(log_a: torch.Tensor, log_b: torch.Tensor, w: float) -> torch.Tensor:
    """log(w * a + (1 - w) * b) from log a and log b, without leaving log space.

    -inf where a == b == 0, with a zero (not NaN) gradient there.
    """
    dead = torch.isneginf(log_a) & torch.isneginf(log_b)
    mix = torch.logaddexp(torch.where(dead, 0.0, log_a) + math.log(w),
                          torch.where(dead, 0.0, log_b) + math.log1p(-w))
    return torch.where(dead, -math.inf, mix)


def check_fraction(name: str, value: float, example: str) -> float:
    if not 0 < value < 1:
        raise ValueError(f"{name} must be strictly between 0 and 1 (got {value}); {example}")
    return float(value)


class TokenTerm(nn.Module):
    """Base of the token terms: a temperature T applied to both models' logits.

    No T^2 factor is applied (unlike Hinton's classifier KD): LM recipes (GKD, DistiLLM) use
    T = 1, where it makes no difference; at other T, scale the term's weight yourself.
    """

    def __init__(self, T: float = 1.0):
        super().__init__()
        if not T > 0:
            raise ValueError(f"T must be > 0 (got {T}); LM distillation usually uses T = 1")
        self.T = float(T)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return self.per_token(student, teacher)
