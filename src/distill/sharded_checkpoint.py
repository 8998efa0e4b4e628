"""Sharded checkpoints of an FSDP run (torch.distributed.checkpoint, DCP), in checkpoint.py's
scheme: a stem, a pointer replaced last, only files distill wrote ever deleted.

    ckpt-<stage>-<epoch>-<step>.dcp/    every process writes its shards of the model, the
                                        optimizer state (get_state_dict: keyed by parameter
                                        name) and the selected weights ("best")
    ckpt-<stage>-<epoch>-<step>.pt      schedule, every process's RNG state, counters (rank 0)
    checkpoint.json                     {"stage", "stem", "format": "dcp"}

A kill before the pointer is replaced leaves the previous checkpoint named by it and complete;
the next save deletes the half-written folder (its files are DCP's, by name). Resuming needs
the same number of processes (Checkpointer.load refuses another, naming it), and is exact.
"""

from __future__ import annotations

from dataclasses import asdict

import torch

from .checkpoint import (
    POINTER,
    Checkpointer,
    TrainState,
    own_checkpoint_dirs,
    own_checkpoint_files,
    remove_shards,
    rng_state,
)
from .io import atomic_write, write_json
from .runtime import all_gather_objects, barrier, is_main


def _state(distiller, optimizer, best_state: dict) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, optim = get_state_dict(distiller, optimizer)
    return {"model": model, "optim": optim, "best": dict(best_state)}


def save_sharded(checkpointer: Checkpointer, distiller, optimizer, schedule, state: TrainState,
                 best_state: dict) -> None:
    """Every process calls this and writes its shards; rank 0 the rest and the pointer."""
    import torch.distributed.checkpoint as dcp

    folder = checkpointer.dir
    rngs = all_gather_objects(rng_state())
    stem = f"ckpt-{checkpointer.stage}-{state.epoch:04d}-{state.step:06d}"
    if checkpointer.current_stem() == stem:  # saved at this step already: nothing trained since
        return
    shards = folder / f"{stem}.dcp"
    if is_main():  # a half-written folder of a killed save at this step
        remove_shards(shards)
    barrier()
    dcp.save(_state(distiller, optimizer, best_state), checkpoint_id=str(shards))
    if is_main():
        extra = {"schedule": schedule.state_dict(), "rng": rngs, "cache": distiller.source_reference(),
                 "state": asdict(state), "data_sha256": checkpointer.data_sha,
                 "has_best": bool(best_state)}  # none before the first evaluation
        atomic_write(folder / f"{stem}.pt", lambda tmp: torch.save(extra, tmp))
        write_json(folder / POINTER, {"stage": checkpointer.stage, "stem": stem, "format": "dcp"})
        for old in own_checkpoint_files(folder) + own_checkpoint_dirs(folder):
            if not old.name.startswith(stem + "."):
                remove_shards(old) if old.is_dir() else old.unlink(missing_ok=True)
    barrier()


def restore_sharded(resume: dict, distiller, optimizer) -> dict:
    """Load the model and optimizer shards of `resume` (Checkpointer.load's) in place; return
    the selected weights (sharded; empty before the first evaluation)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    # the templates DCP loads into: this process's shards, and the same for "best"
    best = {k: v.detach().clone() for k, v in distiller.state_dict().items()} if resume["has_best"] else {}
    state = _state(distiller, optimizer, best)
    dcp.load(state, checkpoint_id=resume["dcp"])
    set_state_dict(distiller, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return state["best"]


def restore_weights(resume: dict, distiller, optimizer) -> dict:
    """Load a checkpoint's weights and optimizer state (sharded or not); return the selected
    weights."""
    if "dcp" in resume:
        return restore_sharded(resume, distiller, optimizer)
    distiller.load_state_dict(resume["model"])
    optimizer.load_state_dict(resume["optimizer"])
    return resume["best"]
