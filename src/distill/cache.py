"""Teacher-output cache: compute the frozen teacher's logits and hooked features once, reuse them.

An entry is keyed by (sample index, view). Without augmentation every sample has one view.
With an augmentation whose draws can be enumerated (crop offsets x flip: `Augment.num_views`),
the view of sample i in epoch e is `augment.view_id(augment.draw(seed, e, i))`, drawn once by
the loader and carried in its Batch (`Batch.view`), so an entry is exactly "the teacher on
this augmented input", whatever epoch re-draws it. Keying by index
alone (torchdistill) would hand the student targets of a different crop. Entries fill lazily:
a miss runs the teacher on that very input (the batch the student sees); `fill` can also
precompute every view. Draws that cannot be replayed (Cutout: num_views None, or mixup) are
refused: the cache would have to key on (seed, epoch, index) and would never hit.

Storage: tensors on the teacher's device (`memory`; once every entry is filled, a lookup is
one gather there, with no host sync: the check runs once per epoch), or .npy memmaps under a
directory (`disk`; sparse files, only filled pages use space; the directory can be reused by a
later run; being on the host, its lookups copy the keys there and the targets back), plus a
filled bitmap. Entries are stored flat, entry id = index * num_views + view.
`fp32` stores the outputs bit for bit; `fp16` halves the bytes (values must fit fp16's range);
`topk=k` keeps only the k largest logits, their class indices and the log-partition
L = logsumexp(z), and rebuilds the logits as

    z'_c = z_c                                    for the k stored classes
    z'_c = L + log(max(1 - sum_top exp(z_i - L), 2^-126) / (C - k))   for the C - k others

so softmax(z') equals the teacher's probabilities on the top k and spreads the remaining mass
uniformly over the other classes (at T = 1; at other temperatures it is an approximation).
fp16 and top-k are approximate, so mode "auto" never picks them.

Exactness. Cached and online runs give identical students only if the teacher's output for a
sample does not depend on the rest of its batch. Eval-mode models do that mathematically, but
BLAS picks different kernels for very small batches (on CPU: <= 11 rows at 2 threads). A miss
set smaller than `min_rows` is therefore padded with hit rows of the same batch, so the teacher
never runs on fewer rows than it would online (min(batch, min_rows)). Metadata (teacher weights,
data, transform, seed, dtype, shapes) is checked when a disk cache is reopened: a mismatch
rebuilds it (rebuild=True) or raises; stale targets are never reused. A disk cache's folder
holds distill's marker (distill.run_folder), listing the files the cache created: a rebuild
deletes only those, and a folder with files but no marker is the user's and is refused.

Size. `nbytes` (`cache_size`) is the most the store can hold: entries x (1 filled byte + the
stored outputs). A run says it before training; a disk cache is refused when its disk has less
free space than the files can still grow by (stores.open_arrays). Nothing in a step is O(N):
a lookup reads and writes only its batch's rows of the memmaps; the filled bitmap is scanned
once per epoch (`set_epoch`).

Under DDP (torchrun) each process runs the teacher only on its own shard's misses. A memory
store is per process, so the new entries are exchanged every step (`_share`) and every process
holds the whole cache. A disk store is one set of files that every process maps: rank 0
creates or checks them, the others map them after it, each process writes only its own rows
(its shard's misses, disjoint within a step) and nothing is exchanged; another process's
entries are in the shared page cache by its next step. That needs every process on one
machine: across machines, cache: disk is refused (use memory or off).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .cache_plan import (
    DTYPES,
    MIN_HIT_RATE,
    cache_size,
    check_epoch_independent,
    expected_hit_rate,
    memory_refusal,
    plan,
    preview,
    size_note,
    store_bytes,
    store_specs,
)
from .contracts import Batch, Outputs
from .errors import DistillError
from .runtime import all_gather_objects, distributed, rank, world_size
from .stores import (
    FORMAT,
    data_hash,
    default_memory_budget,
    open_arrays,
    teacher_hash,
)
from .version import __version__

__all__ = ["MIN_HIT_RATE", "TeacherCache", "cache_size", "expected_hit_rate", "fingerprint", "open_cache",
           "preview", "size_note", "topk_logits"]


class TeacherCache:
    """Per-(sample, view) teacher logits and features; see the module docstring.

    `shapes` maps "logits" and each hooked layer path to its per-sample shape; `meta` is the
    fingerprint (see `fingerprint`). Build one for a run with `open_cache`.
    """

    def __init__(self, num_samples: int, shapes: dict[str, tuple], meta: dict, *, augment=None,
                 seed: int = 0, storage: str = "memory", path=None, dtype: str = "fp32",
                 topk: int | None = None, memory_budget: int | None = None,
                 rebuild: bool = True, min_rows: int = 32, live=None, device=None):
        if augment is not None and augment.is_random and augment.num_views is None:
            raise DistillError(
                "The teacher cache needs an augmentation whose views can be enumerated (crops, "
                f"flips); {augment!r} has draws that cannot be replayed (e.g. Cutout), so every "
                "epoch would be a miss. Set cache: off (or auto, which turns it off here)."
            )
        if dtype not in DTYPES or storage not in ("memory", "disk"):
            raise DistillError(f"cache storage/dtype must be memory|disk and fp32|fp16; got "
                               f"{storage!r}/{dtype!r}.")
        self.augment = augment if augment is not None and augment.is_random else None
        self.seed, self.epoch, self.min_rows = int(seed), 0, int(min_rows)
        self.num_samples = int(num_samples)
        self.num_views = self.augment.num_views if self.augment else 1
        self.dtype, self.storage = dtype, storage
        self.num_classes = int(shapes["logits"][-1])
        self.topk = int(topk) if topk and int(topk) < self.num_classes else None
        self.layers = [k for k in shapes if k != "logits"]
        self.meta = json.loads(json.dumps({
            **meta, "format": FORMAT, "distill": __version__, "num_samples": self.num_samples,
            "num_views": self.num_views, "dtype": dtype, "topk": self.topk, "layout": "entries",
            "shapes": {k: list(v) for k, v in shapes.items()},
        }))
        self.specs = store_specs(shapes, dtype, self.topk)
        self.nbytes = store_bytes(self.num_samples * self.num_views, self.specs)
        self._maps: list = []  # a disk store's memmaps (flushed at epoch boundaries)
        self.hits = self.misses = self.padded = 0
        self.live = live  # the live teacher (a sources.LiveTeacher): run on the misses
        self.complete = False  # every entry filled: lookups need no miss check
        if storage == "memory":
            budget = memory_budget or default_memory_budget()
            if self.nbytes > budget:
                raise DistillError(memory_refusal(self.nbytes, budget, self.num_samples, self.num_views))
            shape, device = (self.num_samples * self.num_views,), device or "cpu"
            self.filled = torch.zeros(shape, dtype=torch.bool, device=device)
            self.arrays = {k: torch.zeros(shape + s, dtype=d, device=device) for k, (s, d) in self.specs.items()}
        else:
            if path is None:
                raise DistillError("cache: disk needs a directory (cache.dir).")
            self.path = Path(path)
            self._open_disk(rebuild)

    # ---------------------------------------------------------------- disk storage

    def _open_disk(self, rebuild: bool) -> None:
        specs = {"filled": ((), torch.bool), **self.specs}
        arrays, self._maps = open_arrays(self.path, self.meta, specs, (self.num_samples * self.num_views,),
                                         self.nbytes, rebuild)
        self.filled = arrays.pop("filled")
        self.arrays = arrays

    def flush(self) -> None:
        """Write dirty memmap pages to disk (disk storage; called at each epoch boundary)."""
        for a in self._maps:
            a.flush()

    # ---------------------------------------------------------------- keys and entries

    def set_epoch(self, epoch: int) -> None:
        """The epoch the loader draws augmentations for; `Distiller.set_epoch` forwards it.
        Once per epoch (one host sync): whether every entry is filled."""
        self.epoch = int(epoch)
        self.flush()
        self.complete = bool(self.filled.all())

    def targets(self, batch: Batch) -> Outputs:
        """The teacher's outputs for a training batch (a `contracts.TeacherSource`)."""
        if batch.index is None:  # rows in no dataset: nothing to key them by
            return self.live.outputs(batch.inputs)
        return self.lookup(batch.inputs, batch.index, self.live.outputs, batch.view)

    def views(self, index: torch.Tensor) -> torch.Tensor:
        """View id of each sample index this epoch (LongTensor on index's device); 0 without
        augmentation. The draw is a pure hash of (seed, epoch, index): no global RNG is touched.
        Loaders carry the view they drew (Batch.view); this re-derives it for callers without."""
        if self.augment is None:
            return torch.zeros(len(index), dtype=torch.long, device=index.device)
        return self.augment.view_id(self.augment.draw(self.seed, self.epoch, index)).long()

    def keys(self, index: torch.Tensor, view: torch.Tensor | None = None) -> torch.Tensor:
        """The entry ids of (index, view) pairs, on the store's device: entries are stored flat,
        index * num_views + view, so a lookup is one row gather. `view` None: re-derived."""
        index = index.detach().to(self.filled.device, torch.long)
        if self.num_views == 1:
            return index
        view = self.views(index) if view is None else view.detach().to(index.device, torch.long)
        return index * self.num_views + view

    def put(self, keys: torch.Tensor, logits: torch.Tensor, features: dict[str, torch.Tensor]) -> None:
        """Store outputs for entries `keys`; the filled bits are set last."""
        where = self.filled.device
        keys = keys.to(where)
        values: dict[str, torch.Tensor] = {f"feature:{k}": features[k] for k in self.layers}
        if self.topk:
            z = logits.float()
            top, ind = z.topk(self.topk, dim=-1)
            values.update({"logits.values": top, "logits.indices": ind.int(),
                           "logits.lse": torch.logsumexp(z, dim=-1)})
        else:
            values["logits"] = logits
        for name, v in values.items():
            stored = v.detach().to(where, self.arrays[name].dtype)
            if self.dtype == "fp16" and stored.is_floating_point() and bool(
                    (stored.isinf() & v.detach().to(where).isfinite()).any()):
                raise DistillError(f"Teacher output '{name}' exceeds fp16's range (65504); "
                                   "use cache.dtype: fp32.")
            self.arrays[name][keys] = stored
        self.filled[keys] = True

    def get(self, keys: torch.Tensor, device) -> Outputs:
        """Stored outputs of entries `keys` (on the store's device), as fp32 on `device`."""
        a = self.arrays
        if self.topk:
            logits = topk_logits(a["logits.values"][keys].float(), a["logits.indices"][keys].long(),
                                 a["logits.lse"][keys], self.num_classes)
        else:
            logits = a["logits"].index_select(0, keys)
        features = {k: a[f"feature:{k}"].index_select(0, keys).to(device, torch.float32) for k in self.layers}
        return Outputs(logits.to(device, torch.float32), features)

    def lookup(self, inputs: torch.Tensor, index: torch.Tensor, compute,
               view: torch.Tensor | None = None) -> Outputs:
        """Teacher outputs for a training batch: hits come from the store, misses run
        `compute(x) -> Outputs` on their rows of `inputs` and are stored. `view`: each row's
        view id as the loader drew it (None: re-derived from the index; 0 without augmentation)."""
        device, keys = inputs.device, self.keys(index, view)
        # every entry is in (checked per epoch; under DDP every process holds the same entries,
        # `_share`): no miss check, no host sync
        if self.complete:
            self.hits += len(keys)
            return self.get(keys, device)
        hit = self.filled[keys]
        miss = ~hit
        m = int(miss.sum())
        new = None
        if m:
            # Pad a small miss set with hit rows so the teacher never runs on fewer rows than
            # min(batch, min_rows): tiny batches take other BLAS kernels (see module docstring).
            rows = miss | (hit & (torch.cumsum(hit, 0) <= self.min_rows - m))
            x = inputs if bool(rows.all()) else inputs[rows.to(device)]
            out = compute(x)
            keep = miss[rows].to(device)
            new = (keys[miss], out.logits[keep], {k: v[keep] for k, v in out.features.items()})
            self.put(*new)
            self.padded += int(rows.sum()) - m
        if distributed() and self.storage == "memory":  # a disk store's files are shared
            self._share(new)
        self.misses += m
        self.hits += len(keys) - m
        # Hits and misses alike are read back from the store, so a (sample, view) gets the same
        # target on first use as later (this matters for fp16 / top-k; fp32 is bit-exact).
        return self.get(keys, device)

    def _share(self, new) -> None:
        """Under DDP each process computes the teacher on its own shard only; exchanging the
        new entries every step gives every process's memory store the whole cache, so no
        (sample, view) is ever computed twice across processes."""
        if new is not None:
            keys, logits, features = new
            new = (keys.cpu(), logits.cpu(), {k: v.cpu() for k, v in features.items()})
        for r, entry in enumerate(all_gather_objects(new)):
            if entry is not None and r != rank():
                self.put(*entry)

    @torch.no_grad()
    def fill(self, compute, loader, batch_size: int = 256) -> None:
        """Ahead of time: compute every missing (sample, view) of `loader`'s data, built in the
        loader's order: the view re-created with `augment.params_for_view`, then the loader's
        transform (at epoch 0: open_cache checked it is the same in every epoch). Under DDP a
        disk store's processes split the samples (process r: the r-th contiguous part) and fill
        the shared files; a memory store is filled whole in every process."""
        by_view = self.filled.view(self.num_samples, self.num_views)
        share = distributed() and self.storage == "disk"
        world, me = (world_size(), rank()) if share else (1, 0)
        lo, hi = self.num_samples * me // world, self.num_samples * (me + 1) // world
        for v in range(self.num_views):
            todo = (~by_view[lo:hi, v]).nonzero().flatten() + lo
            for start in range(0, len(todo), batch_size):
                idx = todo[start:start + batch_size]
                x = loader.raw(idx)
                if self.augment is not None:
                    x = self.augment.apply(x, self.augment.params_for_view(torch.full_like(idx, v)))
                if loader.transform is not None:
                    x = loader.transform(x, 0, idx.to(x.device))
                out = compute(x)
                self.put(self.keys(idx, torch.full_like(idx, v)), out.logits, out.features)
        self.flush()
        if share:
            all_gather_objects(None)  # every process's part is in before any reads it
        self.complete = bool(self.filled.all())

    def reference(self) -> dict:
        """What a checkpoint records about the cache it trained with: where it lives and a
        digest of its metadata (teacher weights, data, transform), to compare on resume."""
        digest = hashlib.sha256(json.dumps(self.meta, sort_keys=True).encode()).hexdigest()
        path = str(self.path) if self.storage == "disk" else None
        return {"storage": self.storage, "path": path, "meta_sha256": digest}

    def stats(self) -> dict:
        """Counters for the log: lookups that hit / missed, padding rows, entries filled."""
        return {"hits": self.hits, "misses": self.misses, "padded": self.padded,
                "filled": int(self.filled.sum()), "entries": self.num_samples * self.num_views}


def topk_logits(values: torch.Tensor, indices: torch.Tensor, lse: torch.Tensor,
                num_classes: int) -> torch.Tensor:
    """Rebuild (B, C) logits from the top-k (values, indices) and L = logsumexp(z); see the
    module docstring for the formula. Computed in float64, returned as float32."""
    v, lse = values.double(), lse.double()
    k = values.shape[-1]
    rest = -torch.expm1(torch.logsumexp(v, dim=-1) - lse)  # 1 - sum_top p_i, accurately
    fill = lse + torch.log(rest.clamp(min=2.0**-126) / (num_classes - k))
    out = fill[:, None].expand(len(v), num_classes).clone()
    return out.scatter(1, indices, v).float()


def fingerprint(teacher, loader) -> dict:
    """What the cached outputs depend on: teacher weights, the training inputs, the loader's
    augmentation (Augment.spec(); the seed only when draws are random, so seeds share an
    unaugmented cache), and a hash of the first 8 samples as epoch 0 gives them (catches a
    changed normalization)."""
    augment = loader.augment
    probe, row = loader.batch(loader.index[:8], 0).inputs, loader.raw(loader.index[:1])
    return {"teacher_sha256": teacher_hash(teacher), "data_sha256": loader.data_digest(),
            "data_shape": [loader.num_samples, *row.shape[1:]], "data_dtype": str(row.dtype),
            "transform": augment.spec() if augment else None, "seed": loader.seed if augment else None,
            "probe_sha256": data_hash(probe)}


def open_cache(mode: str, distiller, loader, *, epochs: int = 1, mixup: bool = False,
               dtype: str = "fp32", topk: int | None = None, path=None, rebuild: bool = True,
               memory_budget: int | None = None, min_rows: int = 32) -> tuple[TeacherCache | None, str]:
    """Decide, build and attach the teacher cache of a run; return (cache or None, reason).

    The views are the ones `loader` (a data.loader.BatchLoader) draws: its `augment` and `seed`. Mode
    "off": none. Whether to build one is `cache_plan.plan` (a run asks it before training):
    "memory" / "disk" as asked, a DistillError if the augmentation cannot be replayed; "auto"
    in memory, fp32, no top-k, only when exact (replayable views) and worthwhile (expected hit
    rate >= MIN_HIT_RATE). Then a DistillError if the loader's transform changes with the
    epoch, or memory exceeds the budget ("auto": off instead, with the reason).
    """
    if mode == "off" or distiller.teacher is None or not distiller.terms:
        return None, "off" if mode == "off" else "off: no teacher terms"
    augment = loader.augment
    views, why = plan(mode, augment, epochs=epochs, mixup=mixup, dtype=dtype, topk=topk)
    if views is None:
        return None, why
    check_epoch_independent(loader)
    live = distiller.live
    device = next(iter(distiller.teacher.parameters()), torch.empty(0)).device
    probe = live.outputs(loader.batch(loader.index[:2], 0).inputs.to(device))
    shapes = {"logits": tuple(probe.logits.shape[1:])} | {k: tuple(v.shape[1:]) for k, v in probe.features.items()}
    args = dict(augment=augment, seed=loader.seed, dtype=dtype, topk=topk, path=path, rebuild=rebuild,
                memory_budget=memory_budget, min_rows=min_rows, live=live, device=device)
    storage = "memory" if mode == "auto" else mode
    try:
        cache = TeacherCache(loader.num_samples, shapes, fingerprint(distiller.teacher, loader), storage=storage, **args)
    except DistillError as e:
        if mode != "auto":
            raise
        return None, f"off: {e}"
    distiller.attach_source(cache)
    return cache, size_note(storage, views, cache.nbytes, path)
