"""Zagoruyko & Komodakis, "Paying More Attention to Attention: Improving the Performance of
Convolutional Neural Networks via Attention Transfer", ICLR 2017 (arXiv:1612.03928).

    a(f)  = q / ||q||_2,   q = flatten( mean over channels of |f|^p )      (one per sample)
    AT    = mean over samples b and positions j of (a(f_s)[b, j] - a(f_t)[b, j])^2

The attention map only averages over channels, so student and teacher may have any channel
counts; their spatial sizes must match. When they differ, the larger map is adaptive-average
pooled to the smaller (per dimension, to (min H, min W)) BEFORE taking |f|^p, as the reference
implementations do. There are no trainable parts.

Paper defaults: p = 2 (the paper also tries p = 1 and 4), beta = 1000.

Paper vs. reference implementations:
- The paper writes the term as beta/2 * || a_s - a_t ||_2 per layer (a norm, not squared, of the
  normalized maps), and says beta = 1000 is "divided by the number of elements in the attention
  map and the batch size". The authors' code (szagoruyko/attention-transfer, cifar.py and
  imagenet.py) computes exactly our mean of squared differences per layer pair,
  `(at(x) - at(y)).pow(2).mean()`, and adds `beta * sum(...)` over the pairs, with no factor
  1/2: beta is a command-line flag (default 0), set to 1e+3 in the README's AT commands. So the
  weight is 1000 per layer pair in the authors' code, as in RepDistiller and mdistiller (their
  AT weight is 1000 too). (Under the authors' multi-GPU `data_parallel` the per-GPU means are
  summed, so there the effective weight on the mean is 1000 times the number of GPUs.) We
  follow the code form (mean of squares) and leave the weight to the config: 1000 per term
  (one term per layer pair) matches all three.
- The paper sums |f|^p over channels; the code takes the mean. The two differ by a constant
  factor that the L2 normalization removes, so the value is the same.
- The reference code raises f to the power p without the absolute value; for even p (the
  default 2) that is the same. We take |f|^p as the paper defines it, so odd p is meaningful.

Labels are not used; unlabelled rows (y == -1) count like any other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import LayerPair, pool_to_common


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """(N, C, *spatial) -> (N, positions): channel mean of |f|^p, L2-normalized per sample."""
    q = f.float().abs().pow(p).mean(dim=1).reshape(f.size(0), -1)
    return F.normalize(q, dim=1)


def at_loss(f_s: torch.Tensor, f_t: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention-transfer term: mean squared difference of the normalized attention maps.

    The teacher map is a fixed target: no gradient flows into it.
    """
    if f_s.dim() < 3 or f_t.dim() < 3 or f_s.size(0) != f_t.size(0):
        raise ValueError(
            f"at_loss needs (N, C, H, W) maps with the same N; got {tuple(f_s.shape)} and "
            f"{tuple(f_t.shape)}"
        )
    f_s, f_t = pool_to_common(f_s.float(), f_t.detach().float())
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


class AT(LayerPair):
    """Attention transfer between one student layer and one teacher layer."""

    cite = "Zagoruyko & Komodakis 2017, Paying More Attention to Attention (ICLR)"

    def __init__(self, student: str, teacher: str, p: float = 2.0):
        super().__init__(student, teacher)
        if not p > 0:
            raise ValueError(f"p must be > 0 (got {p}); the paper uses p = 2 (also tries 1 and 4)")
        self.p = float(p)

    def forward(self, student, teacher, batch) -> torch.Tensor:
        return at_loss(student.features[self.student], teacher.features[self.teacher], self.p)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}"
