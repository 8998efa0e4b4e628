"""Helpers shared by the transformer terms (tinybert.py, minilm.py).

The terms read tap modules of a text classifier (distill.text.models.TextClassifier) by path:
`embeddings`, `hidden.<i>`, `attention.<i>`, `values.<i>` for transformer layer i = 1..depth.

- Layer maps. A term's `layers` argument says which student layer learns from which teacher
  layer: "uniform" (TinyBERT: student layer m <- teacher layer m * N / M, for N a multiple of
  M), "last" ([[M, N]], MiniLM) or explicit [student_layer, teacher_layer] pairs (1-based).
  The depths M (student) and N (teacher) are known only once the models are configured, so
  `check_layer_map` checks the argument's form when the term is built (the config check) and
  `resolve_layer_map` turns it into pairs when the task calls the term's `map_layers`.
- `MappedLayers`: base of the terms that compare mapped layers through one kind of tap; it
  holds the map and declares the mapped paths (`student_layers`, `teacher_layers`, empty until
  `map_layers`) to the Distiller.
- `token_width`: the width d of a probed [B, L, d] feature, with a clear error otherwise.
- `real_tokens`: the batch's attention mask as booleans [B, L] (None: every position counts),
  checked against a feature's batch and sequence sizes.
- `zero_padding`: a [B, L, ...] feature with its padded positions set to 0 (before a projection,
  so that their content reaches neither the value nor a gradient).
- `masked_token_mse`: mean squared error over the real tokens and the hidden units.
- `row_kl`: KL(p_t || p_s) of each row of two (batch, heads, query, key) distributions,
  averaged over the heads and the real query positions.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from .common import feature_shape, fp32_region

MAP_MODES = ("uniform", "last")
EXAMPLE_MAP = "[[1, 2], [2, 4]]"


@runtime_checkable
class MapsLayers(Protocol):
    """A term whose layer paths depend on the two models' depths: the task calls
    `map_layers(student_depth, teacher_depth)` before building the Distiller."""

    def map_layers(self, student_depth: int, teacher_depth: int) -> None: ...


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_layer_map(layers) -> str | tuple[tuple[int, int], ...]:
    """"uniform" / "last", or the explicit pairs as a tuple of (student, teacher) ints; a
    ValueError naming the accepted forms otherwise. Ranges are checked by `resolve_layer_map`."""
    if isinstance(layers, str) and layers in MAP_MODES:
        return layers
    if isinstance(layers, list | tuple) and layers and all(
        isinstance(p, list | tuple) and len(p) == 2 and all(_is_int(v) for v in p) for p in layers
    ):
        return tuple((int(s), int(t)) for s, t in layers)
    raise ValueError(
        f"layers must be 'uniform', 'last' or a non-empty list of [student_layer, teacher_layer] "
        f"pairs of 1-based layer numbers such as {EXAMPLE_MAP} (got {layers!r})"
    )


def _rounded_map(student_depth: int, teacher_depth: int) -> str:
    """An explicit map that spreads the student's layers over the teacher's, as a suggestion."""
    pairs = [[m, max(1, round(m * teacher_depth / student_depth))] for m in range(1, student_depth + 1)]
    return str(pairs)


def resolve_layer_map(layers, student_depth: int, teacher_depth: int) -> tuple[tuple[int, int], ...]:
    """The (student_layer, teacher_layer) pairs of a checked `layers` argument for a student of
    `student_depth` and a teacher of `teacher_depth` transformer layers."""
    for role, depth in (("student", student_depth), ("teacher", teacher_depth)):
        if not _is_int(depth) or depth < 1:
            raise ValueError(f"the {role}'s depth must be a number of transformer layers >= 1 (got {depth!r})")
    m, n = student_depth, teacher_depth
    if layers == "last":
        return ((m, n),)
    if layers == "uniform":
        if n % m:
            raise ValueError(
                f"layers='uniform' maps student layer m to teacher layer m * N / M, which needs the "
                f"teacher's depth N to be a multiple of the student's depth M; the student has {m} "
                f"layers and the teacher {n}. Give an explicit map instead, e.g. "
                f"layers={_rounded_map(m, n)}, or layers='last'"
            )
        return tuple((i, i * n // m) for i in range(1, m + 1))
    bad = [list(p) for p in layers if not (1 <= p[0] <= m and 1 <= p[1] <= n)]
    if bad:
        raise ValueError(
            f"layers {bad} out of range: the student has layers 1..{m} and the teacher 1..{n} "
            f"(pairs are [student_layer, teacher_layer], 1-based)"
        )
    return tuple(layers)


class MappedLayers(nn.Module):
    """A term between mapped student and teacher layers, read at `<tap>.<layer>` on both
    models. Subclasses set the class attribute `tap` and call `super().__init__(layers)`."""

    tap = "hidden"

    def __init__(self, layers):
        super().__init__()
        self.layers = check_layer_map(layers)
        self.pairs: tuple[tuple[int, int], ...] = ()
        self.student_layers: tuple[str, ...] = ()
        self.teacher_layers: tuple[str, ...] = ()

    def map_layers(self, student_depth: int, teacher_depth: int) -> None:
        """Resolve `layers` for these depths and declare the mapped tap paths."""
        self.pairs = resolve_layer_map(self.layers, student_depth, teacher_depth)
        self.student_layers = tuple(dict.fromkeys(f"{self.tap}.{s}" for s, _ in self.pairs))
        self.teacher_layers = tuple(dict.fromkeys(f"{self.tap}.{t}" for _, t in self.pairs))

    def path_pairs(self) -> list[tuple[str, str]]:
        """(student path, teacher path) of each mapped pair; a RuntimeError before map_layers."""
        if not self.pairs:
            raise RuntimeError(
                f"{type(self).__name__}.map_layers(student_depth, teacher_depth) was not called: "
                f"the layer map {self.layers!r} is not resolved yet, so no layer is hooked. "
                "task: text_classification calls it when it builds the terms; calling the term "
                "directly, call map_layers first"
            )
        return [(f"{self.tap}.{s}", f"{self.tap}.{t}") for s, t in self.pairs]

    def summed(self, student, teacher, pair_loss) -> torch.Tensor:
        """sum over the mapped pairs of pair_loss(student feature, teacher feature, student path,
        teacher path), in fp32 with autocast off (the terms sum layers, as TinyBERT does)."""
        pairs = self.path_pairs()
        first = student.features[pairs[0][0]]
        with fp32_region(first):
            total = first.new_zeros((), dtype=torch.float32)
            for s_path, t_path in pairs:
                total = total + pair_loss(student.features[s_path], teacher.features[t_path], s_path, t_path)
        return total

    def extra_repr(self) -> str:
        return f"layers={self.layers!r}, pairs={list(self.pairs)!r}"


def token_width(shapes: dict, paths, role: str, term: str) -> int:
    """The common width d of the probed [B, L, d] features at `paths` of the `role` model."""
    widths = set()
    for path in paths:
        shape = feature_shape(shapes, path, role)
        if len(shape) != 3:
            raise ValueError(
                f"{term} reads (batch, sequence, width) features; the {role}'s '{path}' has shape "
                f"{shape}. Use a text classifier's taps (embeddings, hidden.<i>, values.<i>)"
            )
        widths.add(shape[2])
    if len(widths) != 1:
        raise ValueError(f"{term}: the {role}'s mapped layers differ in width ({sorted(widths)})")
    return widths.pop()


def real_tokens(mask: torch.Tensor | None, feature: torch.Tensor, what: str = "features") -> torch.Tensor | None:
    """The attention mask as booleans [B, L] (True = a real token), or None (every position
    counts); a ValueError when its shape is not the (batch, sequence) sizes of `feature`, a
    [B, L, ...] tensor."""
    if mask is None:
        return None
    if tuple(mask.shape) != tuple(feature.shape[:2]):
        raise ValueError(
            f"the batch's attention mask has shape {tuple(mask.shape)}, but the {what} are for "
            f"(batch, sequence) = {tuple(feature.shape[:2])}: the mask must be (batch, sequence)"
        )
    return mask.to(feature.device) != 0


def zero_padding(x: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """`x` ([B, L, ...]) with the positions where `real` is False set to 0 (None: `x` as is)."""
    if real is None:
        return x
    return torch.where(real.reshape(*real.shape, *([1] * (x.dim() - 2))), x, 0.0)


def masked_token_mse(prediction: torch.Tensor, target: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """Mean over the real tokens and the hidden units of (prediction - target)^2, in fp32.

    prediction, target: [B, L, d]; real: [B, L] booleans or None (all tokens). The target is a
    fixed teacher feature (no gradient). Padded positions are replaced before the difference, so
    their content (even NaN) changes neither the value nor the gradient. No real token: 0.
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"the projected student feature {tuple(prediction.shape)} and the teacher feature "
            f"{tuple(target.shape)} differ in shape"
        )
    prediction, target = prediction.float(), target.detach().float()
    if real is None:
        return (prediction - target).pow(2).mean()
    diff = zero_padding(prediction, real) - zero_padding(target, real)
    return diff.pow(2).sum() / (real.sum() * prediction.size(-1)).clamp_min(1)


def row_kl(log_p_t: torch.Tensor, log_p_s: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """Mean over heads and real query positions of KL(p_t || p_s) over the keys.

    log_p_t, log_p_s: [B, heads, L, L] log-probabilities in fp32 (the teacher's is a fixed
    target: no gradient); real: [B, L] booleans or None. Keys where p_t is 0 add nothing,
    whatever p_s is there. Rows of padded queries are replaced before the KL, so their content
    (even NaN) changes neither the value nor the gradient. No real query: 0.
    """
    if real is not None:
        rows = real[:, None, :, None]
        log_p_t, log_p_s = torch.where(rows, log_p_t, 0.0), torch.where(rows, log_p_s, 0.0)
    log_p_t = log_p_t.detach()
    p_t = log_p_t.exp()
    kl = torch.where(p_t > 0, p_t * (log_p_t - log_p_s), 0.0).sum(-1)  # [B, heads, L]
    if real is None:
        return kl.mean()
    return kl.sum() / (real.sum() * kl.size(1)).clamp_min(1)
