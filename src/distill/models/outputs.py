"""A classifier's forward output, read as logits by one documented rule.

Models from other code return more than a tensor: Hugging Face models a `ModelOutput` with
`.logits`, others `(logits, features)` or `{"logits": ..., ...}`. distill reads them as:

1. a tensor is the logits;
2. otherwise a mapping's `"logits"` entry, or an object's `logits` attribute (Hugging Face);
3. otherwise the first element of a tuple or list.

The logits must be floating point: integer "logits" (a class index, an `argmax`) are an error.

Anything else is an error that says what the model returned, instead of a traceback deep in
a loss.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..errors import DistillError


def logits_of(output, role: str = "model") -> torch.Tensor:
    """The logits in `output`, by the module docstring's rule."""
    if isinstance(output, torch.Tensor):
        return _floating(output, role)
    found = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    if found is None and isinstance(output, tuple | list) and output:
        found = output[0]
    if isinstance(found, torch.Tensor):
        return _floating(found, role)
    raise DistillError(
        f"The {role}'s forward returned {_describe(output)}, which holds no logits tensor. Return "
        "a tensor of logits, an object or dict with a `logits` tensor, or a tuple whose first "
        "element is the logits."
    )


def _floating(logits: torch.Tensor, role: str) -> torch.Tensor:
    if not logits.is_floating_point():  # argmax / .long() / a class index: no gradient, no softmax
        raise DistillError(
            f"The {role}'s forward returned logits of dtype {logits.dtype}; logits must be floating "
            "point (one score per class). Return the output of the last layer, not a class index "
            "(argmax) or an integer cast."
        )
    return logits


def _describe(output) -> str:
    if isinstance(output, Mapping):
        return f"a {type(output).__name__} with keys {sorted(map(str, output))[:6]}"
    if isinstance(output, tuple | list):
        inner = type(output[0]).__name__ if output else "nothing"
        return f"a {type(output).__name__} whose first element is {inner}"
    return f"a {type(output).__name__}"


class LogitsOnly(nn.Module):
    """`model` with its output reduced to the logits, for export: one graph output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(x))
