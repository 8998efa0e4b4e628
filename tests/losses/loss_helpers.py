"""Small builders shared by the per-method loss tests."""

from __future__ import annotations

import math

import torch

from distill.distiller import Outputs


def softmax(xs: list[float]) -> list[float]:
    """Plain-Python softmax, for hand-worked values."""
    exps = [math.exp(x) for x in xs]
    total = sum(exps)
    return [e / total for e in exps]


def outs(**features: torch.Tensor) -> Outputs:
    """Outputs holding `features` by path (dummy logits)."""
    return Outputs(torch.zeros(next(iter(features.values())).size(0), 3), features)


def batch_of(n: int):
    """An unlabelled batch of n samples with their data-set indices."""
    return (torch.zeros(n, 1), torch.full((n,), -1), torch.arange(n))


def built(cls, s_shape, t_shape):
    """cls("s", "t") set up for student / teacher features of the given shapes."""
    term = cls("s", "t")
    term.setup({"s": s_shape}, {"t": t_shape})
    return term
