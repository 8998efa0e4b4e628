"""Whether a run gets a teacher cache, decided from its settings and its loader alone.

`plan` needs no teacher, so a run can refuse a cache setting that can never work before any
stage trains (`ClassificationTask.preflight`); `cache.open_cache` takes the same decision
when it builds the cache. `cache_size` is what the cache can grow to, from the teacher's
output shapes alone, so the run says it before training too. `check_epoch_independent` is the loader's side of exactness: the
cache keys an entry by (sample index, view), so nothing else may change a sample's input
from one epoch to the next.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .errors import DistillError, short
from .stores import check_space, format_bytes

MODES = ("off", "auto", "memory", "disk")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
MIN_HIT_RATE = 0.25  # "auto" turns the cache on only when at least this share of lookups hit


def expected_hit_rate(num_views: int, epochs: int) -> float:
    """Share of lookups that hit over `epochs` epochs when each epoch draws one of `num_views`
    equally likely views per sample: 1 - distinct / draws, distinct = V (1 - (1 - 1/V)^E)."""
    epochs = max(int(epochs), 1)
    distinct = num_views * (1 - (1 - 1 / num_views) ** epochs)
    return 1 - distinct / epochs


def plan(mode: str, augment, *, epochs: int = 1, mixup: bool = False, dtype: str = "fp32",
         topk: int | None = None) -> tuple[int | None, str]:
    """(views per sample, "") when a cache of `mode` is to be built for a loader drawing
    `augment` (its TensorLoader.augment; None: no random draw) over `epochs` epochs, or
    (None, why it is off). Raises DistillError for settings that can never work: an unknown
    mode, "auto" with fp16 or top-k (auto builds exact caches only), "memory" / "disk" with
    draws that cannot be replayed (not enumerable, e.g. Cutout; mixup)."""
    if mode not in MODES:
        raise DistillError(f"cache must be off, auto, memory or disk; got {short(mode)}.")
    if mode == "off":
        return None, "off"
    if mode == "auto" and (dtype != "fp32" or topk):
        raise DistillError("cache: auto only builds exact caches (fp32, no top-k); set cache: "
                           "memory or disk to use cache.dtype fp16 or cache.topk, or remove them.")
    views = augment.num_views if augment is not None else 1
    if views is None or mixup:
        what = "mixup" if mixup else "its augmentation (not enumerable, e.g. Cutout)"
        if mode == "auto":
            return None, f"off: {what} cannot be replayed exactly"
        raise DistillError(f"cache: {mode} cannot be used with {what}: the teacher's inputs "
                           "cannot be replayed, so cached targets would be wrong. Set cache: off "
                           "(or auto, which turns it off here).")
    if mode == "auto":
        rate = expected_hit_rate(views, epochs)
        if rate < MIN_HIT_RATE:
            return None, f"off: expected hit rate {rate:.0%} ({views} views, {epochs} epochs)"
    return views, ""


def check_epoch_independent(loader) -> None:
    """Refuse a TensorLoader whose `transform` changes a sample's input with the epoch once
    the view is fixed: without an augmentation, its batches at epochs 0 and 1; with one, the
    transform at epochs 0 and 1 applied after the same epoch-0 draw (the loader's order).
    A probe of 8 samples: it catches a transform that differs by epoch, not every one."""
    transform, augment, idx = loader.transform, loader.augment, loader.index[:8]
    if augment is None:
        same = torch.equal(loader.batch(idx, 0).inputs, loader.batch(idx, 1).inputs)
    elif transform is None:
        return
    else:
        x = augment.apply(loader.raw(idx), augment.draw(loader.seed, 0, idx))
        same = torch.equal(transform(x.clone(), 0, idx), transform(x.clone(), 1, idx))
    if same:
        return
    if augment is None:
        raise DistillError("The training transform changes with the epoch but the loader "
                           "draws no augmentation the teacher cache can key (an Augment "
                           "passed as the loader's `augment`); set cache: off.")
    raise DistillError("The loader's transform changes with the epoch after its augmentation, "
                       "but the teacher cache keys a sample by its augmentation's view alone, so "
                       "cached targets would be for other inputs. Make the transform the same "
                       "in every epoch (random draws belong in the Augment), or set cache: off.")


def store_specs(shapes: dict[str, tuple], dtype: str, topk: int | None) -> dict[str, tuple[tuple, torch.dtype]]:
    """The stored arrays of a cache: name -> (per-entry shape, dtype). `topk` below the class
    count keeps the top-k values, their class ids and the log-partition instead of the logits."""
    dt, layers = DTYPES[dtype], [k for k in shapes if k != "logits"]
    if topk and topk < shapes["logits"][-1]:
        specs = {"logits.values": ((topk,), dt), "logits.indices": ((topk,), torch.int32),
                 "logits.lse": ((), torch.float32)}  # L in fp32: it sets every rest logit
    else:
        specs = {"logits": (tuple(shapes["logits"]), dt)}
    specs.update({f"feature:{k}": (tuple(shapes[k]), dt) for k in layers})
    return specs


def store_bytes(entries: int, specs: dict[str, tuple[tuple, torch.dtype]]) -> int:
    """The bytes of `entries` entries: a filled byte and every stored array's row."""
    return entries * (1 + sum(math.prod(s) * torch.empty((), dtype=d).element_size()
                              for s, d in specs.values()))


def cache_size(num_samples: int, views: int, shapes: dict[str, tuple], dtype: str = "fp32",
               topk: int | None = None) -> int:
    """`TeacherCache.nbytes` of a cache of these settings, without building it (a run says it
    before training)."""
    return store_bytes(int(num_samples) * int(views), store_specs(shapes, dtype, topk))


def size_note(storage: str, views: int, nbytes: int, path=None) -> str:
    """How a run describes its cache: where, how many views, and how large it can grow."""
    if storage == "memory":
        return f"memory, {views} view(s)/sample, up to {format_bytes(nbytes)}"
    return (f"disk in '{path}', {views} view(s)/sample, up to {format_bytes(nbytes)} of disk "
            "(sparse files: they grow as entries are computed)")


def memory_refusal(nbytes: int, budget: int, num_samples: int, views: int) -> str:
    return (f"The teacher cache would need {format_bytes(nbytes)} of memory ({num_samples} samples "
            f"x {views} views); the budget is {format_bytes(budget)}. Use cache: disk, "
            "cache.dtype: fp16, fewer views, or cache: off.")


def preview(mode: str, views: int, nbytes: int, num_samples: int, budget: int,
            path: Path | None = None) -> str:
    """What a run says about its cache before any stage trains (`size_note`), refusing what can
    never fit: "memory" over the memory budget ("auto": off instead), "disk" with less free
    space in `path` (cache.dir; None: the run folder, checked when the cache opens) than its
    files can grow by."""
    if mode == "disk":
        if path is not None:
            where = next(p for p in (path, *path.parents) if p.exists())  # the disk it will be on
            check_space(where, sorted(path.glob("*.npy")) if path.is_dir() else [], nbytes)
        return size_note("disk", views, nbytes, path or "<run folder>/teacher_cache")
    if nbytes > budget:
        if mode == "auto":
            return f"off: the cache would need {format_bytes(nbytes)}, over the memory budget of {format_bytes(budget)}"
        raise DistillError(memory_refusal(nbytes, budget, num_samples, views))
    return size_note("memory", views, nbytes)
