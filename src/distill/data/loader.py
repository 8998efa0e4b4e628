"""An in-memory loader: the whole dataset lives in tensors, batches are formed by indexing.

For data that fits in memory this replaces DataLoader's per-sample Python calls with one
gather per batch. Items are `contracts.Batch`es with the sample index (the teacher cache's
key). The shuffle order of epoch e depends only on (seed, e), so a resumed run sees the same
order. A random `augment` is drawn once per batch, here: the batch carries the draw's view id,
so the teacher cache keys its entry without drawing again. An optional
`transform(x, epoch, index)` runs per batch after it (normalization for evaluation).
"""

from __future__ import annotations

import torch

from ..contracts import Batch


class TensorLoader:
    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        transform=None,
        augment=None,
        y_is_mask: bool = False,
    ):
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        self.x, self.y = x, y
        self.index = torch.arange(len(x))
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.transform = transform  # transform(x, epoch, index) -> x, applied per batch
        self.augment = augment if augment is not None and augment.is_random else None
        self.y_is_mask = y_is_mask  # an LM's target mask, not class labels
        self.epoch = 0
        self.rank, self.world = 0, 1

    def shard(self, rank: int, world: int) -> TensorLoader:
        """Under DDP: every process walks the same global batches (same seeded order) and
        takes its own contiguous part of each, so `batch_size` stays the global batch."""
        self.rank, self.world = rank, world
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def to(self, device) -> TensorLoader:
        """Move the data to `device` once, so batches need no copies."""
        self.x, self.y, self.index = self.x.to(device), self.y.to(device), self.index.to(device)
        return self

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.x)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=g).to(self.x.device)
        else:
            order = self.index
        epoch, self.epoch = self.epoch, self.epoch + 1
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            if self.world > 1:
                idx = idx.tensor_split(self.world)[self.rank]
            yield self.batch(idx, epoch)

    def batch(self, idx: torch.Tensor, epoch: int) -> Batch:
        """The Batch of samples `idx` as epoch `epoch` draws them."""
        x, view = self.x[idx], None
        if self.augment is not None:
            params = self.augment.draw(self.seed, epoch, idx)
            x = self.augment.apply(x, params)
            view = self.augment.view_id(params) if self.augment.num_views else None
        if self.transform is not None:
            x = self.transform(x, epoch, idx)
        if self.y_is_mask:
            return Batch(x, mask=self.y[idx], index=idx)
        return Batch(x, self.y[idx], idx, view)
