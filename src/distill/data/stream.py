"""The streaming loader: batches read from `Samples` by torch DataLoader workers.

For data larger than memory (a memory-mapped .npy file, an image folder decoded per sample,
a user's Dataset). The batches are the memory loader's: `BatchLoader.batch_indices` gives the
same seeded order and DDP shard, each worker reads one whole batch of rows (`Samples.take`)
and the main process augments and transforms it with the same code as the memory loader, so
both train the same student bit for bit. Only this process's rows are read, and a resumed
epoch starts at its next batch without reading the ones before.

Workers persist across epochs (`persistent_workers`), prefetch `prefetch` batches each, and
pin host memory when the device is a GPU. A forked worker closes its copy of the run folder's
lock (`_drop_locks`), so the lock ends with the run even while workers wait to be collected.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DistillError
from ..resume import LOCK
from .loader import BatchLoader
from .samples import Samples


def _drop_locks(worker_id: int) -> None:
    """In a forked worker: close the inherited descriptors of run folder locks. The lock is a
    flock (resume.lock_folder), held while any copy of its descriptor is open, so persistent
    workers that outlive their run (a traceback kept after it stopped, as a notebook keeps
    one, holds its loaders) would keep the folder locked and refuse its resume in the same
    process."""
    fds = Path("/proc/self/fd")  # Linux; elsewhere workers are spawned and inherit nothing
    if not fds.is_dir():
        return
    for fd in list(fds.iterdir()):
        try:
            if os.path.basename(os.readlink(fd)) == LOCK:
                os.close(int(fd.name))
        except OSError:
            pass  # the descriptor of the listing itself, gone by now


class _Rows(Dataset):
    """Item i of the sampler is a batch of indices; a worker reads those rows."""

    def __init__(self, samples: Samples):
        self.samples = samples

    def __getitem__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | DistillError]:
        try:
            return idx, torch.from_numpy(self.samples.take(idx.numpy()))
        except DistillError as e:  # handed back as a value: torch would re-raise it wrapped in
            return idx, e  # the worker's traceback; __iter__ raises it as it was raised


class _Batches:
    """The sampler: the batches of the epoch the owning loader is iterating (torch may start
    it more than once per iteration, so it reads the position and never advances it). It
    holds its loader weakly: the loader holds the DataLoader that holds it, and without that
    cycle a loader no longer used is freed at once, its workers with it."""

    def __init__(self, loader: StreamLoader):
        self._loader = weakref.ref(loader)

    @property
    def loader(self) -> StreamLoader:
        return self._loader()

    def __iter__(self):
        return self.loader.batch_indices(*self.loader.position)

    def __len__(self) -> int:
        return len(self.loader)


class StreamLoader(BatchLoader):
    def __init__(self, samples: Samples, batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, transform=None, augment=None, *, labels=None,
                 workers: int = 0, prefetch: int = 2, persistent: bool = True,
                 pin_memory: bool = False):
        y = torch.from_numpy(samples.labels if labels is None else labels)
        super().__init__(y, batch_size, shuffle, seed, drop_last, transform, augment)
        self.samples = samples
        self.workers, self.prefetch, self.pin_memory = int(workers), int(prefetch), pin_memory
        self.persistent = persistent  # training loaders keep their workers between epochs
        self.position = (0, 0)  # (epoch, skip) of the iteration under way
        self._loader: DataLoader | None = None

    def _data_loader(self) -> DataLoader:
        if self._loader is None:
            extra = ({"prefetch_factor": self.prefetch, "persistent_workers": self.persistent}
                     if self.workers else {})
            # its own generator: a DataLoader draws a base seed per iteration, and from the
            # global RNG that would shift the model's dropout masks (no longer like the memory
            # loader's, nor the same after a resume)
            self._loader = DataLoader(_Rows(self.samples), batch_size=None, sampler=_Batches(self),
                                      generator=torch.Generator().manual_seed(self.seed),
                                      num_workers=self.workers, pin_memory=self.pin_memory,
                                      worker_init_fn=_drop_locks if self.workers else None, **extra)
        return self._loader

    def __iter__(self):
        self.position = self._advance()
        for idx, x in self._data_loader():
            if isinstance(x, DistillError):
                raise x
            yield self.finish(x, idx, self.position[0])

    def raw(self, idx):
        return torch.from_numpy(self.samples.take(idx.cpu().numpy()))

    def data_digest(self) -> str:
        return self.samples.fingerprint()

    def __getstate__(self):  # a DataLoader with live workers does not pickle (deepcopy, spawn)
        return {**self.__dict__, "_loader": None}
