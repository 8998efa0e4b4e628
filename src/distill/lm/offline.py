"""Offline teacher for language models: its top-k log-probabilities per token, stored once.

For every training row and position the store keeps the k most likely next tokens under the
teacher at temperature T: log-probabilities in fp16 and token ids in int32, 6k bytes per token
(k = 32: 192 bytes, against 2V bytes for a full fp16 row: 64 KB at V = 32k). Training then needs
no teacher in memory. The rest of the mass, 1 - sum of the k probabilities, is not spread over
the vocabulary or renormalised away: each divergence is taken over k + 1 bins, the k stored
tokens and one "rest" bin, on both the teacher's and the student's side (distill.lm.chunked).
That is exact for the coarsened distributions and a lower bound of the full divergence.

The store lives in a folder (`cache: disk`, reusable by later runs) or in memory. Its
meta.json records the teacher's weights hash, the data's hash (of packed rows' position ids
too: a store of rows packed otherwise is not reused), k and T; a store built for
anything else is rebuilt or refused, as for the classifier cache (distill.cache.open_arrays).
Build one with `open_topk_store` (done by `distill run` when `cache.topk` is set).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..contracts import Batch
from ..errors import DistillError, short
from ..progress import progress_bar
from ..stores import FORMAT, open_arrays, teacher_hash
from .chunked import Head, TeacherRows, chunk_rows
from .models import hidden_states

BYTES_PER_ENTRY = 2 + 4  # fp16 log-probability + int32 token id


class TopKStore:
    """Top-k teacher log-probabilities per (row, position); see the module docstring."""

    def __init__(self, rows: int, positions: int, k: int, T: float, meta: dict,
                 storage: str = "memory", path=None, rebuild: bool = True):
        self.k, self.T = int(k), float(T)
        self.complete = False  # every row stored (after `fill`): lookups check nothing
        self.meta = {**meta, "format": FORMAT, "kind": "lm-topk", "k": self.k, "T": self.T,
                     "rows": rows, "positions": positions}
        specs = {"filled": ((), torch.bool), "logp": ((positions, k), torch.float16),
                 "ids": ((positions, k), torch.int32)}
        self.bytes_per_token = BYTES_PER_ENTRY * self.k
        nbytes = rows * (1 + positions * self.bytes_per_token)
        self.storage = storage
        if storage == "disk":
            if path is None:
                raise DistillError("cache: disk needs a directory (cache.dir).")
            self.path = Path(path)
            arrays, self._maps = open_arrays(self.path, self.meta, specs, (rows,), nbytes, rebuild)
        else:
            self.path, self._maps = None, []
            arrays = {n: torch.zeros((rows, *s), dtype=d) for n, (s, d) in specs.items()}
        self.filled, self.logp, self.ids = arrays["filled"], arrays["logp"], arrays["ids"]

    def put(self, index: torch.Tensor, logits: torch.Tensor, positions: slice = slice(None)) -> None:
        """Store the top-k of log_softmax(logits / T) at `positions` of rows `index`;
        logits [B, P, V]. Rows are marked filled by `fill` once all their positions are in."""
        logp = torch.log_softmax(logits.float() / self.T, -1)
        top, ids = logp.topk(self.k, dim=-1)
        index = index.cpu()
        self.logp[index, positions] = top.to("cpu", torch.float16)
        self.ids[index, positions] = ids.to("cpu", torch.int32)

    def targets(self, batch: Batch) -> TeacherRows:
        """The stored top-k of the batch's counted positions (a `contracts.TeacherSource`)."""
        if batch.index is None:
            raise DistillError("This batch has no stored teacher targets (it is in no dataset) "
                               "and the teacher was dropped; on-policy batches need the online "
                               "teacher (cache.topk=null).")
        logp, top = self.rows(batch.index, batch.mask[:, 1:].bool(), batch.inputs.device)
        return TeacherRows(topk_logp=logp, topk_ids=top, topk_T=self.T)

    def rows(self, index: torch.Tensor, target: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probs [M, k] fp32, ids [M, k] int64) of the counted positions (`target`, [B, P])."""
        index = index.cpu()
        if not self.complete and not bool(self.filled[index].all()):
            raise DistillError("The offline teacher store lacks rows of this batch; rebuild it "
                               "(delete cache.dir) with the teacher available.")
        target = target.cpu()
        return (self.logp[index][target].to(device, torch.float32),
                self.ids[index][target].to(device, torch.long))

    @torch.no_grad()
    def fill(self, teacher, loader, device, batch_size: int = 32, quiet: bool = True) -> int:
        """Run the teacher over every row not yet stored; return how many rows it computed."""
        todo = (~self.filled).nonzero().flatten()
        head = Head.of(teacher)
        positions = self.logp.shape[1]
        # the output layer runs on slices of positions, like the chunked loss: a batch's full
        # [rows, positions, vocab] logits are never formed
        step = max(1, chunk_rows(head.weight.shape[0]) // batch_size)
        with progress_bar("teacher top-k", total=len(todo), quiet=quiet) as advance:
            for start in range(0, len(todo), batch_size):
                idx = todo[start:start + batch_size]
                rows = idx.to(loader.x.device)
                packed = None if loader.positions is None else loader.positions[rows].to(device)
                hidden = hidden_states(teacher, loader.x[rows].to(device), packed)
                for p in range(0, positions, step):
                    sl = slice(p, min(p + step, positions))
                    self.put(idx, head.logits(hidden[:, sl]), sl)
                self.filled[idx] = True  # last: a row counts only once all its positions are in
                advance(len(idx))
        self.flush()
        self.complete = bool(self.filled.all())  # then a lookup checks nothing
        return len(todo)

    def flush(self) -> None:
        for a in self._maps:
            a.flush()

    def set_epoch(self, epoch: int) -> None:
        self.flush()

    def reference(self) -> dict:
        """What a checkpoint records about the store (compared on resume)."""
        digest = hashlib.sha256(json.dumps(self.meta, sort_keys=True).encode()).hexdigest()
        return {"storage": self.storage, "path": str(self.path) if self.path else None, "meta_sha256": digest}


def open_topk_store(teacher, loader, *, k: int, T: float, storage: str, path, device,
                    rebuild: bool = True, quiet: bool = True) -> tuple[TopKStore, str]:
    """Open (reuse or build) the store for `loader`'s rows and fill what is missing."""
    if storage not in ("memory", "disk"):
        raise DistillError(f"An offline top-k teacher needs cache: memory or disk; got {short(storage)}.")
    vocab = int(teacher.get_output_embeddings().weight.shape[0])
    if not 0 < k < vocab:
        raise DistillError(f"cache.topk must be between 1 and the vocabulary size - 1 ({vocab - 1}); got {k}.")
    meta = {"teacher_sha256": teacher_hash(teacher), "data_sha256": loader.data_digest(),
            "data_shape": list(loader.x.shape)}
    rows, length = loader.x.shape
    store = TopKStore(rows, length - 1, k, T, meta, storage, path, rebuild)
    computed = store.fill(teacher, loader, device, quiet=quiet)
    where = f"in '{store.path}'" if store.path else "in memory"
    return store, (f"offline top-{k} teacher {where}: {store.bytes_per_token} bytes/token, "
                   f"{rows - computed} of {rows} rows reused")
