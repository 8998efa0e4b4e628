"""Training checkpoints that survive kills: exact resume, atomic writes.

A checkpoint is a pair of files plus a pointer:

    ckpt-<stage>-<epoch>-<step>.safetensors   Distiller weights (student + projectors), and
                                              the validation-selected weights ("best.*")
    ckpt-<stage>-<epoch>-<step>.pt            optimizer, schedule, RNG states, counters
    checkpoint.json                           which pair is current

Each file is written atomically and the pointer is replaced last, so a kill at any moment
leaves the previous checkpoint complete and loadable. The .pt file holds only tensors and
plain Python values: it loads with torch.load(weights_only=True).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .errors import DistillError
from .io import atomic_write, plain_state, write_json
from .runtime import all_gather_objects, barrier, is_main, rank, world_size

POINTER = "checkpoint.json"
CKPT_NAME = re.compile(r"ckpt-[A-Za-z0-9_-]+-\d{4,}-\d{6,}\.(safetensors|pt)")  # the stems save() writes


SHARDS_NAME = re.compile(r"ckpt-[A-Za-z0-9_-]+-\d{4,}-\d{6,}\.dcp")  # the folders save_sharded writes
# the files DCP writes into them (a kill mid-save can leave the .tmp of its metadata)
SHARD_FILE = re.compile(r"(__\d+)?\.metadata(\.tmp)?|__\d+_\d+\.distcp")


def own_checkpoint_dirs(folder: Path) -> list[Path]:
    """The sharded-checkpoint folders in `folder` that distill wrote (distill.sharded_checkpoint)."""
    return [p for p in folder.glob("ckpt-*.dcp") if SHARDS_NAME.fullmatch(p.name) and p.is_dir()]


def remove_shards(path: Path) -> None:
    """Delete a sharded checkpoint's files (DCP's, by name), then the folder if that empties it."""
    if not path.is_dir():
        return
    for f in path.iterdir():
        if SHARD_FILE.fullmatch(f.name) and f.is_file():
            f.unlink(missing_ok=True)
    if not any(path.iterdir()):
        path.rmdir()


def own_checkpoint_files(folder: Path) -> list[Path]:
    """The checkpoint files in `folder` that distill wrote (by name): a user's own
    `ckpt-notes.txt` is never one of them, so it is never deleted."""
    return [p for p in folder.glob("ckpt-*") if CKPT_NAME.fullmatch(p.name) and p.is_file()]


@dataclass
class TrainState:
    """Where training stands: enough, with the weights, to continue bit for bit."""

    epoch: int = 0  # epochs completed
    step: int = 0  # steps completed within epoch `epoch` (non-zero mid-epoch)
    best_epoch: int | float = -1  # the best evaluation's epoch, as its record says it
    best_val: dict = field(default_factory=lambda: {"acc": -1.0})
    history: list = field(default_factory=list)  # the evaluations' records, one per metrics line
    partial: dict = field(default_factory=dict)  # the running sums since the last evaluation
    best_step: int = -1  # the best evaluation's global step


def rng_state() -> dict:
    """Every generator's state as plain Python values (lists of ints), so it can be exchanged
    between processes and loaded with weights_only=True."""
    name, keys, *rest = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), *rest],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


class Checkpointer:
    """Saves and loads the checkpoint of one stage of a run folder."""

    def __init__(self, run_dir: Path, stage: str, data: tuple[str, str] | None = None):
        """`data`: (fingerprint, where the data come from) of the data this run trains on; a
        checkpoint records the fingerprint and refuses to resume on different data."""
        self.dir, self.stage = Path(run_dir), stage
        self.data_sha, self.data_name = data or (None, "")

    def save(self, distiller, optimizer, schedule, state: TrainState, best_state: dict) -> None:
        """Every process calls this; rank 0 writes (with every rank's RNG state)."""
        rngs = all_gather_objects(rng_state())
        if not is_main():
            barrier()
            return
        stem = f"ckpt-{self.stage}-{state.epoch:04d}-{state.step:06d}"
        weights = {f"model.{k}": v for k, v in plain_state(distiller.state_dict()).items()}
        weights.update({f"best.{k}": v for k, v in plain_state(best_state).items()})
        atomic_write(self.dir / f"{stem}.safetensors", lambda tmp: save_file(weights, str(tmp)))
        extra = {
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "rng": rngs,  # one per process, in rank order
            "cache": distiller.source_reference(),
            "state": asdict(state),
            "data_sha256": self.data_sha,
        }
        atomic_write(self.dir / f"{stem}.pt", lambda tmp: torch.save(extra, tmp))
        write_json(self.dir / POINTER, {"stage": self.stage, "stem": stem})
        for old in own_checkpoint_files(self.dir):
            if not old.name.startswith(stem + "."):
                old.unlink(missing_ok=True)
        barrier()

    def load(self) -> dict | None:
        """The stage's checkpoint as {"model", "best", "optimizer", "schedule", "rng",
        "state"}, or None when the run folder's checkpoint belongs to no or another stage."""
        info = self._pointer()
        if info is None or info.get("stage") != self.stage:
            return None
        stem = self.dir / str(info.get("stem"))
        sharded = info.get("format") == "dcp"  # distill.sharded_checkpoint: weights in stem.dcp/
        try:
            weights = {} if sharded else load_file(f"{stem}.safetensors")
            extra = torch.load(f"{stem}.pt", map_location="cpu", weights_only=True)
        except Exception as e:
            raise DistillError(
                f"The checkpoint {stem}.* in '{self.dir}' cannot be read ({str(e).splitlines()[0][:200]}). "
                f"{self._way_out()}"
            ) from None
        if sharded:
            if not (self.dir / f"{stem.name}.dcp" / ".metadata").is_file():
                raise DistillError(f"The sharded checkpoint {stem}.dcp in '{self.dir}' is missing or "
                                   f"incomplete. {self._way_out()}")
            extra["dcp"] = f"{stem}.dcp"
        extra["model"] = {k[6:]: v for k, v in weights.items() if k.startswith("model.")}
        extra["best"] = {k[5:]: v for k, v in weights.items() if k.startswith("best.")}
        extra["state"] = TrainState(**extra["state"])
        if len(extra["rng"]) != world_size():
            raise DistillError(
                f"The checkpoint in '{self.dir}' was written by {len(extra['rng'])} process(es); "
                f"resume it with the same number (now {world_size()})."
            )
        self._check_data(extra.get("data_sha256"))
        extra["rng"] = extra["rng"][rank()]
        return extra

    def current_stem(self) -> str | None:
        """The stem the pointer names, None without a pointer."""
        info = self._pointer()
        return None if info is None else info["stem"]

    def _pointer(self) -> dict | None:
        """checkpoint.json's record, None without one; a damaged one is an error naming the fix."""
        pointer = self.dir / POINTER
        if not pointer.exists():
            return None
        try:
            info = json.loads(pointer.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            info, why = None, f"it is not valid JSON: {e}"
        else:
            why = "it names no checkpoint"
        if not isinstance(info, dict) or not isinstance(info.get("stem"), str):
            raise DistillError(f"'{pointer}' is damaged ({why}). {self._way_out()}")
        return info

    def _way_out(self) -> str:
        return (
            f"Delete exactly '{self.dir / POINTER}' and resume again (distill run --resume "
            f"{self.dir}): the interrupted stage ({self.stage}) restarts from epoch 0, with the "
            "same result; finished stages are kept."
        )

    def _check_data(self, recorded: str | None) -> None:
        if recorded and self.data_sha and recorded != self.data_sha:
            raise DistillError(
                f"The data changed since '{self.dir}' was checkpointed: {self.data_name} is not the "
                f"data the {self.stage} stage trained on (sha256 {recorded[:12]}..., now "
                f"{self.data_sha[:12]}...). Put the original data back and resume, or start a new "
                "run with another --out."
            )

    @staticmethod
    def clear(run_dir: Path) -> None:
        """Remove the checkpoint once its stage is complete."""
        for path in own_checkpoint_files(Path(run_dir)):
            path.unlink(missing_ok=True)
        for path in own_checkpoint_dirs(Path(run_dir)):
            remove_shards(path)
        (Path(run_dir) / POINTER).unlink(missing_ok=True)
