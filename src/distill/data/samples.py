"""Samples: where a dataset's inputs live, read a batch of rows at a time.

Both loaders read inputs through this one interface, so a dataset in RAM, a memory-mapped
.npy file, a folder of images decoded on demand and a user's torch Dataset train alike:

    len(samples)            the number of samples
    samples.labels          int64 (N,): every label, known up front (-1: unlabelled)
    samples.sample_shape    one input's shape; samples.dtype its numpy dtype
    samples.take(idx)       numpy (len(idx), *sample_shape) of the rows idx, in that order
    samples.fingerprint()   a digest of what the inputs are (run folders, the teacher cache)
    samples.subset(idx)     the same data restricted to rows idx (splits share the storage)

`take` is a pure function of the indices, so the memory loader (one gather from a tensor
holding every row) and the streaming loader (workers calling `take` on their batches) see the
same values. Sources that read files keep only paths, so they pickle small into workers.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from ..errors import DistillError


class Samples:
    """The interface (see the module docstring); `take_rows` is what a source implements."""

    labels: np.ndarray
    sample_shape: tuple[int, ...]
    dtype: np.dtype

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        return self.take_rows(idx)

    def take_rows(self, idx: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def sample_bytes(self) -> int:
        return math.prod(self.sample_shape) * np.dtype(self.dtype).itemsize

    @property
    def nbytes(self) -> int:
        """The bytes of every row decoded: what the memory loader would hold."""
        return len(self) * self.sample_bytes

    def fingerprint(self) -> str:
        raise NotImplementedError

    def subset(self, idx) -> Samples:
        return Subset(self, np.asarray(idx, dtype=np.int64))

    def chunks(self, rows: int, workers: int = 0):
        """Every row in order, `rows` at a time (bounded-memory passes: statistics, decoding),
        read by `workers` processes (0: here) and yielded in order."""
        return self.map_chunks(rows, None, workers)

    def map_chunks(self, rows: int, fn=None, workers: int = 0):
        """fn(chunk) for each chunk of `rows` rows in order (the chunk itself when fn is None),
        computed in `workers` processes (0: here): a reduction ships only its result."""
        if workers == 0 or len(self) <= rows:
            for start in range(0, len(self), rows):
                part = self.take(np.arange(start, min(start + rows, len(self))))
                yield part if fn is None else fn(part)
            return
        import torch
        from torch.utils.data import DataLoader

        chunks = DataLoader(_Chunks(self, rows, fn), batch_size=None, num_workers=workers,
                            generator=torch.Generator())  # leaves the global RNG (dropout) alone
        for part in chunks:
            if isinstance(part, DistillError):  # raised in a worker: re-raised as it was raised
                raise part
            yield part.numpy() if fn is None else tuple(p.numpy() for p in part)

    def in_storage_order(self) -> Samples:
        """The same rows in the order they are stored (sequential reads for an order-free pass)."""
        return self

    def materialize(self, workers: int = 0) -> np.ndarray:
        """Every row in one array (the memory loader)."""
        out = np.empty((len(self), *self.sample_shape), dtype=self.dtype)
        rows = max(1, (64 << 20) // max(self.sample_bytes, 1))
        for start, part in zip(range(0, len(self), rows), self.chunks(rows, workers), strict=True):
            out[start:start + len(part)] = part
        return out


class _Chunks:
    """Chunk k of `samples` (a map-style dataset for DataLoader workers)."""

    def __init__(self, samples: Samples, rows: int, fn=None):
        self.samples, self.rows, self.fn = samples, rows, fn

    def __len__(self) -> int:
        return -(-len(self.samples) // self.rows)

    def __getitem__(self, k: int):
        start = k * self.rows
        try:
            part = self.samples.take(np.arange(start, min(start + self.rows, len(self.samples))))
            return part if self.fn is None else self.fn(part)
        except DistillError as e:  # torch would wrap it in the worker's traceback
            return e


class ArraySamples(Samples):
    """Rows of an array: in RAM, or an np.memmap (only the rows asked for are read)."""

    def __init__(self, x: np.ndarray, labels: np.ndarray, digest: str | None = None):
        if len(x) != len(labels):
            raise DistillError(f"The inputs have {len(x)} rows but the labels {len(labels)}.")
        self.x, self.labels = x, np.asarray(labels, dtype=np.int64)
        self.sample_shape, self.dtype = tuple(x.shape[1:]), x.dtype
        self._digest = digest  # a file-backed array names its file instead of hashing it all

    def take_rows(self, idx):
        return np.ascontiguousarray(self.x[idx])

    def materialize(self, workers: int = 0):
        return self.x if not isinstance(self.x, np.memmap) else super().materialize(workers)

    def fingerprint(self) -> str:
        if self._digest is None:
            h = hashlib.sha256()
            for part in self.chunks(max(1, (64 << 20) // max(self.sample_bytes, 1))):
                h.update(memoryview(np.ascontiguousarray(part)).cast("B"))
            h.update(self.labels.tobytes())
            self._digest = f"{self.dtype}{self.sample_shape}:{h.hexdigest()}"
        return self._digest


class Subset(Samples):
    """Rows `rows` of `base`: a split, without copying the data."""

    def __init__(self, base: Samples, rows: np.ndarray):
        self.base, self.rows = base, rows
        self.labels = base.labels[rows]
        self.sample_shape, self.dtype = base.sample_shape, base.dtype

    def take_rows(self, idx):
        return self.base.take_rows(self.rows[idx])

    def materialize(self, workers: int = 0):
        if isinstance(self.base, ArraySamples) and not isinstance(self.base.x, np.memmap):
            return self.base.x[self.rows]
        return super().materialize(workers)

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.base.fingerprint().encode())
        h.update(self.rows.tobytes())
        return h.hexdigest()

    def subset(self, idx):
        return Subset(self.base, self.rows[np.asarray(idx, dtype=np.int64)])

    def in_storage_order(self):
        return Subset(self.base, np.sort(self.rows))


class Mapped(Samples):
    """`fn` applied to every row of `base` as it is read (a per-feature standardization):
    `fn` must be elementwise, so a row comes out the same in any batch."""

    def __init__(self, base: Samples, fn, dtype):
        self.base, self.fn = base, fn
        self.labels, self.sample_shape, self.dtype = base.labels, base.sample_shape, np.dtype(dtype)

    def take_rows(self, idx):
        return self.fn(self.base.take_rows(idx))

    def fingerprint(self) -> str:
        return self.base.fingerprint()

    def subset(self, idx):
        return Mapped(self.base.subset(idx), self.fn, self.dtype)

    def in_storage_order(self):
        return Mapped(self.base.in_storage_order(), self.fn, self.dtype)


def concat(parts: list[Samples]) -> Samples:
    """The rows of each part in turn (the transfer set: training data plus unlabelled extra)."""
    return parts[0] if len(parts) == 1 else Concat(parts)


class Concat(Samples):
    def __init__(self, parts: list[Samples]):
        self.parts = parts
        self.labels = np.concatenate([p.labels for p in parts])
        self.sample_shape, self.dtype = parts[0].sample_shape, parts[0].dtype
        self.starts = np.cumsum([0] + [len(p) for p in parts])

    def take_rows(self, idx):
        out = np.empty((len(idx), *self.sample_shape), dtype=self.dtype)
        which = np.searchsorted(self.starts, idx, side="right") - 1
        for k, part in enumerate(self.parts):
            sel = np.flatnonzero(which == k)
            if len(sel):
                out[sel] = part.take_rows(idx[sel] - self.starts[k])
        return out

    def fingerprint(self) -> str:
        return hashlib.sha256("|".join(p.fingerprint() for p in self.parts).encode()).hexdigest()

    def in_storage_order(self):
        return Concat([p.in_storage_order() for p in self.parts])


@dataclass
class Source:
    """A dataset as opened (distill.data.source): the pool of samples and the splits it predefines."""

    train: Samples  # the pool training is taken from (validation and test too, unless given)
    val: Samples | None = None
    test: Samples | None = None
    lazy: bool = False  # rows are read from disk on demand: the loader choice matters
    class_names: list[str] | None = None
