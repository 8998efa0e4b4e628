"""Universal Logit Distillation (Boizard et al. 2024, "Towards Cross-Tokenizer Distillation: the
Universal Logit Distillation Loss for LLMs"), per aligned token.

    ULD = sum_j | q_(j) - p_(j) |

q_(1) >= q_(2) >= ... are the student's next-token probabilities sorted in decreasing order,
p_(j) the teacher's, and the shorter of the two vectors is padded with zeros. This is the
Wasserstein-1 distance between the two distributions when each is laid out on the ranks 1..V
(the paper's closed form for that ordering), so it needs no shared vocabulary: it compares only
how the mass is spread, which is what makes teacher and student tokenizers interchangeable.
Bounded in [0, 2]; 0 when one distribution is a permutation of the other (in particular when the
student equals the teacher).

The positions are aligned by the caller (distill.lm.cross_tokenizer): the i-th target token of
an example under the student's tokenizer against the i-th under the teacher's, up to the shorter
of the two. The paper's reference code softmaxes each side at its own temperature (both 1 by
default); here one `T` serves both, as for every token term.
"""

from __future__ import annotations

import torch

from .common import TokenTerm


def uld(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-row sum_j |q_(j) - p_(j)| from log q (`student`, [M, Vs]) and log p (`teacher`,
    [M, Vt]); Vs and Vt may differ. The longer vector's tail beyond the shorter's length is
    compared with the zero padding, i.e. its probabilities are summed as they are."""
    q = student.exp().sort(dim=-1, descending=True).values
    p = teacher.exp().sort(dim=-1, descending=True).values
    n = min(q.shape[-1], p.shape[-1])
    # |x - 0| = x beyond the shorter vector: summed without materialising the padding
    return (q[..., :n] - p[..., :n]).abs().sum(-1) + q[..., n:].sum(-1) + p[..., n:].sum(-1)


class ULD(TokenTerm):
    """ULD for teacher and student with different tokenizers (`data.teacher_tokenizer`), or the
    same one. It works on probabilities sorted per token, so it is the term that can be used
    when token ids do not mean the same text on both sides."""

    cite = "Boizard et al. 2024, Towards Cross-Tokenizer Distillation: the Universal Logit Distillation Loss"

    def per_token(self, student, teacher):
        return uld(student, teacher)
