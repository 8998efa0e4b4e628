"""Atomic file writes and safe weight loading.

Every file a run writes goes through a temporary file, fsync and rename, so a crash or a kill
mid-write leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import DistillError


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def append_line(path: Path, line: str) -> None:
    """Append one line and flush it to disk (metrics.jsonl grows by whole lines)."""
    with open(path, "a") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def plain_state(state: dict) -> dict:
    """CPU, contiguous, standard-layout copies safetensors accepts: tied weights (a language
    model's output layer sharing the embedding) become separate tensors, since safetensors
    refuses tensors that share memory; loading sets both names to the same values."""
    return {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in state.items()}


def save_weights(module: torch.nn.Module, path: Path) -> None:
    """Save a module's state dict as safetensors, atomically."""
    state = plain_state(module.state_dict())
    atomic_write(path, lambda tmp: save_file(state, str(tmp)))


def read_state_dict(path: str | Path, trust: bool = False) -> dict:
    """A state dict from safetensors, or `.pt`/`.pth` via torch.load(weights_only=True).

    A pickle that needs arbitrary code to load is refused unless `trust` is set (the user's
    explicit --trust-checkpoint): unpickling can run any code the file's author chose.
    """
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"Checkpoint file '{path}' does not exist. Check the path you gave.")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # truncated or not safetensors at all
            raise DistillError(
                f"Checkpoint '{path}' is not a readable safetensors file ({e}); it may be corrupt "
                "or truncated. Save it again, or point to another file."
            ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust:
            raise DistillError(
                f"Checkpoint '{path}' needs arbitrary code to load (it pickles more than tensors: "
                f"{str(e).splitlines()[0][:160]}). Save a state_dict or safetensors instead, or pass "
                "--trust-checkpoint if you trust the file's author."
            ) from None
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # corrupt, truncated, not a torch file
        raise DistillError(
            f"Checkpoint '{path}' cannot be read ({e}); it may be corrupt or truncated. Use a "
            "safetensors file or a state_dict saved with torch.save."
        ) from None
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DistillError(f"Checkpoint '{path}' holds no state dict of tensors.")
    return state


def load_weights(module: torch.nn.Module, path: str | Path, trust: bool = False) -> None:
    """Load weights into `module`; a mismatch lists the differing keys and shapes."""
    state = read_state_dict(path, trust)
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:8]}")
        if wrong:
            parts.append(f"shape mismatches {wrong[:8]}")
        raise DistillError(
            f"Checkpoint '{path}' does not fit the model ({'; '.join(parts)}). "
            "Check that the config's model name and kwargs match the architecture that was saved."
        )
    module.load_state_dict(state)
