"""Atomic file writes and safe weight loading.

Every file a run writes goes through a temporary file, fsync and rename, so a crash or a kill
mid-write leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import DistillError


def _new_file_mode(path: Path) -> int:
    """The mode open() would give `path`: its current mode when it exists, else 0o666 & ~umask
    (mkstemp's temporary files are 0o600, whatever the umask)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)  # reading the umask means setting it; put it straight back
        os.umask(umask)
        return 0o666 & ~umask


class WriteFailed(DistillError, OSError):
    """A file could not be written (a full disk, a read-only folder); what was written before is
    intact. `path` and `reason` let a caller add its own way to continue (a run: --resume). An
    OSError too, so code that handles an unwritable folder's OSError handles this one."""

    def __init__(self, path: Path, reason: str, advice: str = ""):
        advice = advice or ("free space and run the command again" if "space" in reason
                            else "make the folder writable (or choose another) and run the command again")
        self.path, self.reason = Path(path), reason
        super().__init__(f"could not write {path}: {reason}; files written so far are intact; {advice}.")
        self.strerror, self.filename = reason, str(path)

    def __str__(self) -> str:
        return self.args[0]


# What a full disk looks like when a library, not Python, writes: safetensors reports the OS
# error in its message; torch.save's zip writer only notices the short write ("unexpected pos").
_NO_SPACE = re.compile(r"no space left|os error 28|storagefull|quota exceeded|unexpected pos|file write failed", re.I)


def write_failure(error: BaseException, path: Path) -> WriteFailed | None:
    """The WriteFailed a failed write of `path` amounts to, or None for errors that are not about
    the disk (a bug, an interrupt), which the caller re-raises unchanged."""
    if isinstance(error, DistillError):
        return None
    if isinstance(error, OSError):
        return WriteFailed(path, error.strerror or str(error))
    if isinstance(error, (RuntimeError, SafetensorError)) and _NO_SPACE.search(str(error)):
        return WriteFailed(path, "No space left on device")
    return None


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write `path` through a temporary file, fsync and rename. A failed write (a full disk)
    removes the temporary file, keeps the old `path`, and raises WriteFailed."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(Path(tmp))
        os.chmod(tmp, _new_file_mode(path))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        failed = write_failure(e, path)
        if failed is None:
            raise
        raise failed from None


def text_lines(path: Path) -> list[str]:
    """A UTF-8 text file's lines; a file that is not UTF-8 is an error naming its first bad line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DistillError(f"'{path}', line {line}: not UTF-8 text (byte {data[e.start]:#04x}). "
                           "Save the file as UTF-8.") from None


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def append_line(path: Path, line: str) -> None:
    """Append one line and flush it to disk (metrics.jsonl grows by whole lines). A failed
    append (a full disk) cuts the file back to its last whole line and raises WriteFailed; a
    kill mid-append can still leave a torn last line, which read_lines drops."""
    path = Path(path)
    data = (line.rstrip("\n") + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as e:
        raise write_failure(e, path) from None
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        try:
            while data:  # unbuffered: nothing is left to flush (and fail again) on close
                data = data[os.write(fd, data):]
            os.fsync(fd)
        except OSError as e:
            _cut(fd, size)
            raise write_failure(e, path) from None
    finally:
        os.close(fd)


def _cut(fd: int, size: int) -> None:
    """Cut a file back to `size` bytes (what a failed append added, which also frees the space
    it took); a file that cannot even be cut keeps a torn line read_lines drops."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, size)


def read_lines(path: Path) -> list[dict]:
    """The JSON records of a .jsonl file, in order, without a torn last line (one cut short by
    a kill or a full disk: no trailing newline, or not valid JSON) or any other unreadable line."""
    records = []
    text = Path(path).read_text(errors="replace") if Path(path).is_file() else ""
    lines = text.split("\n")
    for line in lines[:-1]:  # the part after the last newline is torn (or empty)
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def plain_state(state: dict) -> dict:
    """CPU, contiguous, standard-layout copies safetensors accepts: tied weights (a language
    model's output layer sharing the embedding) become separate tensors, since safetensors
    refuses tensors that share memory; loading sets both names to the same values."""
    return {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in state.items()}


def save_weights(module: torch.nn.Module, path: Path) -> None:
    """Save a module's state dict as safetensors, atomically."""
    state = plain_state(module.state_dict())
    atomic_write(path, lambda tmp: save_file(state, str(tmp)))


# Where other toolkits nest the weights: RepDistiller and mdistiller save {'model': ...,
# 'epoch': ..., 'accuracy': ..., 'optimizer': ...}; others use the remaining names.
STATE_KEYS = ("model", "state_dict", "net", "model_state_dict")
# Prefixes a wrapper adds to every key: DataParallel / DDP, torch.compile, Lightning-style
# modules that hold the network as `self.model`.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


def _is_state(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _quoted(keys) -> str:
    keys = [repr(str(k)) for k in keys]
    return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")


def _read_file(path: Path, trust: bool) -> object:
    """What the file holds, read with torch.load(weights_only=True) unless `trust`."""
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # truncated or not safetensors at all
            raise DistillError(
                f"Checkpoint '{path}' is not a readable safetensors file ({e}); it may be corrupt "
                "or truncated. Save it again, or point to another file."
            ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust:
            # torch's message is a page of advice; the line naming the refused global is the news
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
            why = f"it pickles {found.group(1)}" if found else str(e).splitlines()[0][:160]
            if found and found.group(1).startswith("numpy"):
                why += ", a numpy value such as a saved accuracy; only tensors and plain numbers load safely"
            raise DistillError(
                f"Checkpoint '{path}' needs arbitrary code to load ({why}). Save a state_dict or "
                "safetensors instead, or pass --trust-checkpoint if you trust the file's author."
            ) from None
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # corrupt, truncated, not a torch file
        raise DistillError(
            f"Checkpoint '{path}' cannot be read ({e}); it may be corrupt or truncated. Use a "
            "safetensors file or a state_dict saved with torch.save."
        ) from None


def _find_state(obj: object, path: Path) -> tuple[dict, str]:
    """The state dict in what a file holds: the file itself, a pickled module (trusted files
    only), or one nested under a STATE_KEYS name; and a note saying which."""
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict(), f"read the state dict of a pickled {type(obj).__name__}"
    if _is_state(obj):
        return obj, f"read a plain state dict ({len(obj)} tensors)"
    if isinstance(obj, dict):
        for key in STATE_KEYS:
            inner = obj.get(key)
            if isinstance(inner, torch.nn.Module):
                inner = inner.state_dict()
            if _is_state(inner):
                rest = [k for k in obj if k != key]
                ignored = f"; ignored {_quoted(rest)}" if rest else ""
                return inner, f"read the state dict under '{key}' ({len(inner)} tensors{ignored})"
    held = f"a dict with keys {_quoted(obj)}" if isinstance(obj, dict) and obj else f"{type(obj).__name__}: {str(obj)[:40]}"
    raise DistillError(
        f"Checkpoint '{path}' holds no state dict of tensors, at its top level or under "
        f"{_quoted(STATE_KEYS)}: it holds {held}. Save the weights with "
        "torch.save(model.state_dict(), path), or point to the file that holds them."
    )


def read_state_dict(path: str | Path, trust: bool = False) -> dict:
    """A state dict from safetensors, or `.pt`/`.pth` via torch.load(weights_only=True): bare,
    or nested under one of STATE_KEYS beside non-tensor entries (epoch, accuracy, optimizer).

    A pickle that needs arbitrary code to load is refused unless `trust` is set (the user's
    explicit --trust-checkpoint): unpickling can run any code the file's author chose.
    """
    return _read_state(Path(path), trust)[0]


def _read_state(path: Path, trust: bool) -> tuple[dict, str]:
    if not path.is_file():
        raise DistillError(f"Checkpoint file '{path}' does not exist. Check the path you gave.")
    return _find_state(_read_file(path, trust), path)


def _strip_prefixes(state: dict, own: set[str]) -> tuple[dict, str]:
    """Strip wrapper prefixes that every key carries, one at a time (`module._orig_mod.`), while
    the stripped keys match the model's at least as well; `model.` only when strictly better,
    since a model may name its own parameters `model.*`."""
    stripped = ""
    while True:
        for prefix in WRAPPER_PREFIXES:
            if not all(k.startswith(prefix) and len(k) > len(prefix) for k in state):
                continue
            new = {k[len(prefix):]: v for k, v in state.items()}
            gain = len(own.intersection(new)) - len(own.intersection(state))
            if gain > 0 or (gain == 0 and prefix != "model."):
                state, stripped = new, stripped + prefix
                break
        else:
            return state, stripped


def _mismatch(state: dict, own: dict) -> str:
    """'' when `state` fits `own`; otherwise the first few missing / unexpected keys and shapes."""
    missing = [k for k in own if k not in state]  # in the model's order: the first layer first
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong)):
        if items:
            more = f" and {len(items) - 8} more" if len(items) > 8 else ""
            parts.append(f"{len(items)} {label} {items[:8]}{more}")
    return "; ".join(parts)


def load_weights(module: torch.nn.Module, path: str | Path, trust: bool = False) -> str:
    """Load weights into `module` and return one line saying what was read (e.g. "teacher.pth:
    read the state dict under 'model' (...); stripped prefix 'module.'"), for the caller to
    log. A mismatch lists the differing keys and shapes."""
    path = Path(path)
    state, note = _read_state(path, trust)
    own = module.state_dict()
    state, stripped = _strip_prefixes(state, set(own))
    if stripped:
        note += f"; stripped prefix '{stripped}'"
    problems = _mismatch(state, own)
    if problems:
        raise DistillError(
            f"Checkpoint '{path}' does not fit the model ({problems}; the loader {note}). Check that "
            "the config's model name and kwargs (teacher.model and teacher.kwargs for a teacher "
            "checkpoint) match the architecture that was saved."
        )
    module.load_state_dict(state)
    return f"{path.name}: {note}"
