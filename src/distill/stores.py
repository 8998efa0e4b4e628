"""Array stores shared by the teacher sources that keep targets (distill.cache's view cache,
distill.lm.offline's top-k store): content hashes for their fingerprints, and .npy memmaps
under a folder that distill owns (distill.run_folder's marker), reused only when their
metadata matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import DistillError
from .io import write_json
from .run_folder import claim, delete_owned_files, record_files
from .runtime import all_gather_objects, distributed, rank, world_size

FORMAT = 1


def _update(h, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().data)  # raw bytes, any dtype (bf16 too)


def teacher_hash(teacher: torch.nn.Module) -> str:
    """sha256 over the class name and every state_dict entry (name, dtype, shape, bytes) in order:
    parameters and buffers (BatchNorm statistics) both shape the outputs."""
    h = hashlib.sha256(type(teacher).__qualname__.encode())
    for name, t in teacher.state_dict().items():
        h.update(name.encode())
        _update(h, t)
    return h.hexdigest()


def data_hash(x: torch.Tensor) -> str:
    """sha256 over dtype, shape and all bytes of the training inputs (CIFAR: 150 MB, ~0.3 s)."""
    h = hashlib.sha256()
    _update(h, x)
    return h.hexdigest()


def default_memory_budget() -> int:
    """A quarter of physical RAM: the cache shares the host with the data and the models."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def format_bytes(n: float) -> str:
    """A byte count in the largest binary unit it fills: '512 B', '3.00 KiB', '1.25 GiB'."""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if round(n, 2) < 1024 or unit == "TiB":
            return f"{n:.2f} {unit}"


def _array_files(path: Path, names) -> dict[str, Path]:
    return {n: path / f"{i:02d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', n)}.npy" for i, n in enumerate(names)}


def open_arrays(path: Path, meta: dict, specs: dict, lead: tuple, nbytes: int,
                rebuild: bool) -> tuple[dict[str, torch.Tensor], list]:
    """Open (or create) the .npy memmaps of a disk store in `path`: name -> (per-entry shape,
    dtype) in `specs`, each with leading shape `lead`. The store is reused only if meta.json
    equals `meta` (teacher weights, data, settings) and every file exists; otherwise it is
    rebuilt (rebuild=True, with a warning naming what changed) or refused. Refused too when the
    files can grow by more than the disk's free space (`check_space`). Returns the arrays as
    tensors sharing the mappings (writes go to the files) and the mappings (to flush).

    Under torchrun every process maps the same files: rank 0 creates or checks them first, the
    others map them once it has (they never create, rebuild or delete). That needs one machine:
    processes on several machines are refused."""
    if not distributed():
        return _open_arrays(path, meta, specs, lead, nbytes, rebuild)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))
    if local != world_size():
        raise DistillError(
            f"cache: disk under torchrun maps one set of files that every process shares, so every "
            f"process must run on one machine; this run has {world_size()} processes, {local} on "
            "this machine. Use cache: memory (each process keeps the whole cache) or cache: off.")
    opened, error = None, None
    if rank() == 0:
        try:
            opened = _open_arrays(path, meta, specs, lead, nbytes, rebuild)
        except DistillError as e:
            error = str(e)
    first = all_gather_objects(error)[0]  # also the barrier: rank 0's files are complete
    if first is not None:
        raise DistillError(first)
    return opened if opened is not None else _open_arrays(path, meta, specs, lead, nbytes, False)


def check_space(path: Path, files, nbytes: int) -> None:
    """Refuse (DistillError) a store of up to `nbytes` whose files (sparse: they take space as
    they fill) can grow by more than the free space of `path`'s disk."""
    used = sum(f.stat().st_blocks * 512 for f in files if f.is_file())
    free = shutil.disk_usage(path).free
    if nbytes - used > free:
        raise DistillError(
            f"The teacher cache in '{path}' can grow to {format_bytes(nbytes)} (its files fill as "
            f"entries are computed; {format_bytes(used)} so far), but that disk has "
            f"{format_bytes(free)} free. Free {format_bytes(nbytes - used - free)} or more, point "
            "cache.dir to a disk with room, shrink the cache (cache.dtype: fp16, cache.topk: K), "
            "or use cache: memory or cache: off.")


def _open_arrays(path: Path, meta: dict, specs: dict, lead: tuple, nbytes: int,
                 rebuild: bool) -> tuple[dict[str, torch.Tensor], list]:
    meta_file = path / "meta.json"
    files = _array_files(path, specs)
    try:
        old = json.loads(meta_file.read_text()) if meta_file.is_file() else None
    except (OSError, ValueError):
        old = {}  # unreadable: treat as stale
    ok = old == meta and all(f.is_file() for f in files.values())
    # only a folder with distill's marker is ever rebuilt (run_folder); an unmarked cache of
    # this very version and fingerprint is adopted, anything else unmarked is the user's
    if claim(path, "cache", "cache.dir", adopt=ok) and ok:
        record_files(path, [meta_file.name, *(f.name for f in files.values())])
    if old is not None and not ok:
        diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
        if not rebuild:
            raise DistillError(
                f"The teacher cache in '{path}' was built for a different "
                f"{', '.join(diff) or 'layout (files missing)'}; reusing it would train on "
                "stale targets. Delete the directory, point cache.dir elsewhere, or allow a rebuild."
            )
        warnings.warn(f"teacher cache in '{path}' is stale ({', '.join(diff)}): rebuilding",
                      stacklevel=5)
    if not ok:
        delete_owned_files(path)  # only files the marker lists: never a file of the user's
        theirs = [f.name for f in (meta_file, *files.values()) if f.exists()]
        if theirs:
            raise DistillError(f"cache.dir '{path}' holds {', '.join(theirs)}, which distill did "
                               "not write; move them away or point cache.dir elsewhere.")
    check_space(path, files.values(), nbytes)
    if not ok:
        record_files(path, [meta_file.name, *(f.name for f in files.values())])
    arrays, maps = {}, []
    for name, f in files.items():
        s, d = specs[name]
        np_dtype = torch.empty((), dtype=d).numpy().dtype
        # open_memmap creates a sparse file: unfilled entries take no disk space
        a = np.lib.format.open_memmap(f, mode="r+" if ok else "w+", dtype=np_dtype, shape=lead + s)
        maps.append(a)
        arrays[name] = torch.from_numpy(a)  # shares the mapping: writes go to the file
    if not ok:
        write_json(meta_file, meta)
    return arrays, maps
