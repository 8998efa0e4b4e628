"""Token-level divergences for language-model distillation, one per file, in TOKEN_LOSSES.

A token term maps per-token log-probabilities of the student and the teacher (bins on the
last axis) to one value per token (`per_token`); it has a temperature `T` and never applies its
own weight. The LM distiller (`distill.lm`) evaluates them chunk by chunk over the counted
target tokens and averages over those tokens. Name one in a config's `loss` section of a
`task: language_model` run, beside `ce` (next-token cross-entropy).

Beside them, HIDDEN_LOSSES holds the terms on intermediate hidden states (`lm_hidden`, hidden.py):
one value per counted row too, but from mapped layers' features through learned projections
instead of from the two distributions. LM_LOSSES is the registry a language-model config names
from: both.
"""

from __future__ import annotations

from torch import nn

from ...errors import ConfigError
from ...naming import resolve
from .forward_kl import ForwardKL, forward_kl
from .hidden import LMHidden
from .jsd import JSD, generalized_jsd
from .reverse_kl import ReverseKL, reverse_kl
from .skew_kl import SkewKL, skew_kl
from .skew_rkl import SkewReverseKL, skew_reverse_kl
from .tv import TV, total_variation
from .uld import ULD, uld

TOKEN_LOSSES: dict[str, type[nn.Module]] = {
    "forward_kl": ForwardKL,
    "reverse_kl": ReverseKL,
    "jsd": JSD,
    "skew_kl": SkewKL,
    "skew_rkl": SkewReverseKL,
    "tv": TV,
    "uld": ULD,
}
HIDDEN_LOSSES: dict[str, type[nn.Module]] = {"lm_hidden": LMHidden}
LM_LOSSES: dict[str, type[nn.Module]] = {**TOKEN_LOSSES, **HIDDEN_LOSSES}
# Terms that compare distributions without a shared vocabulary: the only ones a teacher with its
# own tokenizer (data.teacher_tokenizer) can be distilled with.
CROSS_TOKENIZER_TERMS: tuple[type[nn.Module], ...] = (ULD,)


def resolve_token_loss(name: str) -> type[nn.Module]:
    """Return the token or hidden-state term for a registry name or a `package.module:Class` path."""
    return resolve(name, LM_LOSSES, "token loss", "package.module:Class", ConfigError)


__all__ = [
    "HIDDEN_LOSSES", "LM_LOSSES", "TOKEN_LOSSES", "resolve_token_loss", "forward_kl", "reverse_kl", "generalized_jsd",
    "skew_kl", "skew_reverse_kl", "total_variation", "uld", "CROSS_TOKENIZER_TERMS",
]
