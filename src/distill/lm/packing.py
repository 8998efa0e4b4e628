"""Document-aware packing: several documents per row, each seeing only itself.

A split's encoded documents (ids, target mask) are joined into one stream and cut into rows of
`length` tokens that overlap by one token (the previous row's last token is the next row's
first), so no token is lost and no row is padded but the last. Every row carries position ids
that restart at 0 at each document start and at the row start; attention is causal within
each such segment and never crosses a segment boundary (block-diagonal), so a packed row
computes exactly what its documents would one by one.

Boundaries:
- The first token of a document is not a target: nothing of its own document comes before it,
  and the previous document is not visible.
- A document longer than a row (or one that crosses a row boundary) continues in the next row
  as a new segment with positions from 0: its context is cut at the row boundary. Every token
  of it but its very first is still a target exactly once (the row-overlap token is counted as
  the last token of the earlier row, and is the context-only position 0 of the later one).

transformers (5.x) builds the block-diagonal mask itself from such position ids when no
attention mask and no cache are given (masking_utils.find_packed_sequence_indices), for GPT-2
and Llama with eager and sdpa attention alike; `check_isolation` verifies that a model does so
once before training, so an architecture that ignores packed position ids is refused rather
than silently attending across documents.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DistillError
from .models import hidden_states


def pack(encoded, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, target mask, position ids), each [rows, length], from [(ids, mask)] documents."""
    ids = np.concatenate([np.asarray(i, dtype=np.int64) for i, _ in encoded])
    mask = np.concatenate([np.asarray(m, dtype=np.int64) for _, m in encoded])
    start = np.zeros(len(ids), dtype=bool)
    start[np.cumsum([0] + [len(i) for i, _ in encoded[:-1]])] = True
    mask[start] = 0  # a document's first token has no context of its own
    step = length - 1
    rows = max(1, -(-(len(ids) - 1) // step))
    pad = rows * step + 1 - len(ids)
    ids, mask = np.pad(ids, (0, pad)), np.pad(mask, (0, pad))
    start = np.pad(start, (0, pad), constant_values=False)
    start[len(start) - pad:][:1] = True  # the last row's padding: a segment of its own, never counted
    take = (np.arange(rows) * step)[:, None] + np.arange(length)
    x, m, s = ids[take], mask[take], start[take]
    m[:, 0], s[:, 0] = 0, True
    return x, m, segment_positions(s)


def segment_positions(starts: np.ndarray) -> np.ndarray:
    """Position ids [rows, length] counting from 0 at every True of `starts` [rows, length]."""
    t = np.broadcast_to(np.arange(starts.shape[1]), starts.shape)
    last_start = np.maximum.accumulate(np.where(starts, t, 0), axis=1)
    return (t - last_start).astype(np.int64)


def first_segment(positions: torch.Tensor) -> int:
    """Length of a row's first segment (positions [L]): up to the next restart at 0."""
    restarts = (positions[1:] == 0).nonzero()
    return int(restarts[0]) + 1 if len(restarts) else len(positions)


@torch.no_grad()
def check_isolation(model: torch.nn.Module, role: str, ids: torch.Tensor, positions: torch.Tensor) -> None:
    """The hidden states of a packed row's later document must equal that document's run
    alone; a model that ignores packed position ids would attend across documents. One row is
    checked: the first of `ids` [N, L] that holds a document boundary (none: nothing to check)."""
    rows = (positions[:, 1:] == 0).any(1).nonzero()
    if not len(rows):
        return
    row = int(rows[0])
    start = int((positions[row] == 0).nonzero()[-1])  # the row's last segment
    model.eval()
    packed = hidden_states(model, ids[row:row + 1], positions[row:row + 1])[0, start:].float()
    alone = hidden_states(model, ids[row:row + 1, start:])[0].float()
    if not torch.allclose(packed, alone, rtol=1e-4, atol=1e-4):
        raise DistillError(
            f"The {role} lets packed documents attend to each other (max difference "
            f"{(packed - alone).abs().max():.3g} against the document run alone): it does not "
            "build a per-document attention mask from position ids. Set data.packing=false, or "
            "use a GPT-2/Llama-style transformers model."
        )
