"""Fixed elementwise functions some causal LMs apply to their output layer's logits.

A few architectures do not use the output layer's z = h W^T (+ b) as their logits:

    soft-capping (Gemma 2, Team Gemma 2024):  logits = c * tanh(z / c)
    a logit scale (Cohere Command-R):         logits = s * z
    a logit divisor (Granite, muP):           logits = z / d  (s = 1 / d)

Both are captured by one function, logits = c * tanh(s * z / c) (c = None: s * z), read from
the model's config by its `model_type`. The chunked token loss (distill.lm.chunked) applies it
to each chunk inside the autograd region it differentiates, so the gradients include its
derivative (c * tanh(s z / c) has d/dz = s * (1 - tanh^2(s z / c))); evaluation and the
offline top-k store apply it through `Head.logits`; generation (on-policy batches, `distill
generate`) samples from the model's own forward, which applies it already.

A model whose forward post-processes logits in some other way is still refused by
`distill.lm.models.check_head`, which compares `model(ids).logits` with the head's on a probe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LogitTransform:
    """logits = cap * tanh(scale * z / cap), or scale * z when cap is None."""

    scale: float = 1.0
    cap: float | None = None

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            z = z * self.scale
        if self.cap is not None:
            z = torch.tanh(z / self.cap) * self.cap
        return z

    def describe(self) -> str:
        parts = ([f"x {self.scale:g}"] if self.scale != 1.0 else []) + \
                ([f"soft-capped at {self.cap:g}"] if self.cap is not None else [])
        return ", ".join(parts) or "none"


IDENTITY = LogitTransform()


def _value(config, key: str) -> float | None:
    value = getattr(config, key, None)  # a transformers config: its fields vary by architecture
    return None if value is None else float(value)


def _cap(key: str):
    return lambda c: LogitTransform(cap=_value(c, key))


def _scale(key: str, inverse: bool = False):
    def rule(c) -> LogitTransform:
        s = _value(c, key)
        if s is None:
            return IDENTITY
        return LogitTransform(scale=1.0 / s if inverse else s)
    return rule


# model_type of the (text) config -> its transform; each line checked against the model's
# forward in transformers 5.24 (models/<name>/modeling_<name>.py, after `self.lm_head(...)`)
RULES = {
    **{t: _cap("final_logit_softcapping")
       for t in ("gemma2", "gemma3_text", "gemma3n_text", "vaultgemma", "nanochat", "beam")},
    "recurrent_gemma": _cap("logits_soft_cap"),
    **{t: _scale("logit_scale") for t in ("cohere", "cohere2", "cohere2_moe")},
    **{t: _scale("logits_scaling", inverse=True)
       for t in ("granite", "granitemoe", "granitemoeshared", "granitemoehybrid", "minicpm3")},
    "hyperclovax": _scale("logits_scaling"),  # multiplies, unlike Granite
    "falcon_h1": _scale("lm_head_multiplier"),
}


def logit_transform(config) -> LogitTransform:
    """The transform a model with this transformers config applies to its head's output
    (IDENTITY for GPT-2, Llama, Mistral, Qwen and any architecture not in RULES)."""
    if config is None:
        return IDENTITY
    text = config.get_text_config()
    rule = RULES.get(getattr(text, "model_type", None))
    return rule(text) if rule is not None else IDENTITY
