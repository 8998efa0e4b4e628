"""distill's loaders: the in-memory `TensorLoader` and the streaming `StreamLoader`
(distill.data.stream), both on `BatchLoader`.

A loader yields `contracts.Batch`es carrying the sample index (the teacher cache's key). The
shuffle order of epoch e depends only on (seed, e), so a resumed run sees the same order, and
both loaders walk the same order. A random `augment` is drawn once per batch, from the batch's
raw inputs, here: the batch carries the draw's view id, so the teacher cache keys its entry
without drawing again. An optional `transform(x, epoch, index)` runs per batch after it
(normalization for evaluation). What differs between the loaders is only where a batch's raw
inputs come from (`raw`): one gather from a tensor holding every row, or workers reading
`Samples.take`. Given the same raw rows, the same code turns them into the same batch.

What the engine and the teacher cache read from a loader: len, iteration, `set_epoch(epoch,
skip)`, `shard`, `num_samples`, `index`, `seed`, `augment`, `transform`, `raw(idx)`,
`batch(idx, epoch)` and `data_digest()`.
"""

from __future__ import annotations

import torch

from ..contracts import Batch
from ..stores import data_hash


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """The sample order of an epoch: a seeded permutation, the same for every loader."""
    if not shuffle:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


class BatchLoader:
    """Order, sharding, resume position and the per-batch augmentation; subclasses give `raw`."""

    def __init__(self, y: torch.Tensor, batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, transform=None, augment=None, y_is_mask: bool = False):
        self.y = y
        self.index = torch.arange(len(y))
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.transform = transform  # transform(x, epoch, index) -> x, applied per batch
        self.augment = augment if augment is not None and augment.is_random else None
        self.y_is_mask = y_is_mask  # an LM's target mask, not class labels
        self.epoch, self.skip = 0, 0
        self.rank, self.world = 0, 1
        self.positions: torch.Tensor | None = None  # an LM's packed position ids (TensorLoader)

    @property
    def num_samples(self) -> int:
        return len(self.y)

    def shard(self, rank: int, world: int) -> BatchLoader:
        """Under DDP: every process walks the same global batches (same seeded order) and
        takes its own contiguous part of each, so `batch_size` stays the global batch."""
        self.rank, self.world = rank, world
        return self

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """The next iteration is epoch `epoch`, starting after its first `skip` batches (a run
        resumed mid-epoch: those are neither read nor yielded)."""
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batch_indices(self, epoch: int, skip: int):
        """This process's sample indices of each batch of `epoch`, from batch `skip` on."""
        order = epoch_order(self.num_samples, self.seed, epoch, self.shuffle)
        for b in range(skip, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield idx.tensor_split(self.world)[self.rank] if self.world > 1 else idx

    def _advance(self) -> tuple[int, int]:
        epoch, skip = self.epoch, self.skip
        self.epoch, self.skip = epoch + 1, 0
        return epoch, skip

    def __iter__(self):
        epoch, skip = self._advance()
        for idx in self.batch_indices(epoch, skip):
            yield self.batch(idx, epoch)

    def raw(self, idx: torch.Tensor) -> torch.Tensor:
        """The inputs of samples `idx` as stored, before augmentation and transform."""
        raise NotImplementedError

    def batch(self, idx: torch.Tensor, epoch: int) -> Batch:
        """The Batch of samples `idx` as epoch `epoch` draws them."""
        return self.finish(self.raw(idx), idx, epoch)

    def finish(self, x: torch.Tensor, idx: torch.Tensor, epoch: int) -> Batch:
        """Raw inputs `x` of samples `idx` made the batch of epoch `epoch`: augmented, transformed."""
        view = None
        if self.augment is not None:
            params = self.augment.draw(self.seed, epoch, idx)
            x = self.augment.apply(x, params)
            view = self.augment.view_id(params) if self.augment.num_views else None
        if self.transform is not None:
            x = self.transform(x, epoch, idx)
        y = self.y[idx.to(self.y.device)]
        if self.y_is_mask:
            positions = None if self.positions is None else self.positions[idx.to(self.positions.device)]
            return Batch(x, mask=y, index=idx, positions=positions)
        return Batch(x, y, idx, view)

    def data_digest(self) -> str:
        raise NotImplementedError


class TensorLoader(BatchLoader):
    """Every row in one tensor `x`: a batch is one gather, with no per-sample Python calls.
    `positions` (an LM's packed rows, distill.lm.packing): position ids per row, carried by
    each Batch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False,
                 seed: int = 0, drop_last: bool = False, transform=None, augment=None,
                 y_is_mask: bool = False, positions: torch.Tensor | None = None):
        if len(x) != len(y) or (positions is not None and positions.shape != x.shape):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}, or positions are not x's shape")
        super().__init__(y, batch_size, shuffle, seed, drop_last, transform, augment, y_is_mask)
        self.x, self.positions = x, positions

    def to(self, device) -> TensorLoader:
        """Move the data to `device` once, so batches need no copies."""
        self.x, self.y, self.index = self.x.to(device), self.y.to(device), self.index.to(device)
        if self.positions is not None:
            self.positions = self.positions.to(device)
        return self

    def batch_indices(self, epoch, skip):
        for idx in super().batch_indices(epoch, skip):
            yield idx.to(self.x.device)

    def raw(self, idx):
        return self.x[idx.to(self.x.device)]

    def data_digest(self) -> str:
        """The inputs' hash; packed rows hash their position ids too (they change the forward)."""
        if self.positions is None:
            return data_hash(self.x)
        return data_hash(torch.stack([self.x, self.positions.to(self.x)]))
