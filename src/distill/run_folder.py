"""Which folders distill owns: an ownership marker, written first when distill creates a folder.

distill deletes or overwrites only what it wrote. A run folder, a `--seeds` folder and a disk
teacher cache each hold `.distill.json` ({"kind", "id", "created", "distill"}), written
before anything else when distill creates the folder (or takes over an existing empty one).
A folder that exists, holds files and has no marker is the user's: distill refuses to write
there. A marker of another kind is refused too (a --seeds folder is not a run folder).

Folders written before the marker existed are recognised by what distill always writes
(`legacy`): a run folder by config.yaml + metrics.jsonl + stages.json or checkpoint.json; a
--seeds folder by seeds-run.json, or by holding only seed-<k>/ runs and the seed report's
files; a cache only when its meta.json equals, exactly, the one the cache would write now.
Resuming or reusing such a folder adds the marker; `distill report` / `export` only read it.

A cache or export folder's marker also lists the files distill created there ("files"); a
rebuild or a new export deletes those only (`distill export`'s folder: distill.export).
In a marked run folder, `sweep` removes what a killed write or checkpoint left behind: atomic
writes' temporary files (`.<name>.<8 random chars>.tmp`, io.atomic_write) and checkpoint files
(`ckpt-<stage>-<epoch>-<step>.safetensors|.pt`); nothing else.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path

from .checkpoint import CKPT_NAME
from .errors import DistillError
from .io import write_json

MARKER = ".distill.json"
KINDS = {"run": "run folder", "seeds": "--seeds folder", "cache": "teacher cache", "export": "`distill export` folder",
         "tune": "`distill tune` folder"}
TMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # tempfile.mkstemp(prefix=".<name>.", suffix=".tmp")
SEED_REPORT = {"report.md", "seeds.json", "accuracy.png", "gain.png", "seeds-run.json"}


def read_marker(folder: str | Path) -> dict | None:
    """The marker of `folder`, or None when it has none (or a file of that name distill did not
    write: not a JSON object of a known kind)."""
    try:
        marker = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("kind") in KINDS else None


def owned(folder: str | Path, kind: str) -> bool:
    """Whether `folder` holds distill's marker of `kind`."""
    marker = read_marker(folder)
    return marker is not None and marker["kind"] == kind


def _entries(folder: Path) -> list[Path]:
    """What a folder holds, leaving out the temporary files of an atomic write in flight."""
    return [p for p in folder.iterdir() if not TMP.match(p.name)] if folder.is_dir() else []


def legacy(folder: str | Path, kind: str) -> bool:
    """Whether an unmarked `folder` is one distill wrote before markers existed (module docstring)."""
    folder = Path(folder)
    if kind == "tune":
        return False  # `distill tune` folders have had the marker from the start
    if kind == "run":
        return all((folder / n).is_file() for n in ("config.yaml", "metrics.jsonl")) and (
            (folder / "stages.json").is_file() or (folder / "checkpoint.json").is_file())
    if kind == "seeds":
        if (folder / "seeds-run.json").is_file():
            return True
        entries = _entries(folder)
        runs = [p for p in entries if p.is_dir() and p.name.startswith("seed-")]
        return bool(runs) and all(p in runs or p.name in SEED_REPORT for p in entries)
    # a cache: meta.json naming a teacher hash and only NN-*.npy beside it. Only a hint (for a
    # check before training): the cache adopts it only if meta.json equals its own exactly
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "teacher_sha256" in meta and all(
        p.name == "meta.json" or re.fullmatch(r"\d\d-.+\.npy", p.name) for p in _entries(folder))


def _refusal(folder: Path, kind: str, what: str) -> str:
    marker = read_marker(folder)
    if marker is None and (folder / "seeds-run.json").is_file():
        marker = {"kind": "seeds"}  # a --seeds folder written before markers existed
    if marker is not None:
        hint = (f" (an unfinished one continues with `distill run --resume {folder}`)"
                if marker["kind"] == "seeds" else "")
        return (f"{what} '{folder}' is a distill {KINDS[marker['kind']]}{hint}, not a "
                f"{KINDS[kind]}. Choose another folder; nothing in it was changed.")
    return (f"{what} '{folder}' holds files distill did not write (no valid {MARKER} marker); "
            "give an empty or new folder, or delete it yourself. Nothing in it was changed.")


def check(folder: str | Path, kind: str, what: str, adopt: bool = False) -> None:
    """Refuse (DistillError naming `folder`) what `claim` would refuse; writes nothing."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DistillError(f"{what} '{folder}' is a file, not a folder. Give a folder path.")
    if not owned(folder, kind) and (read_marker(folder) is not None or _entries(folder)) and not adopt:
        raise DistillError(_refusal(folder, kind, what))


def claim(folder: str | Path, kind: str, what: str, adopt: bool = False) -> bool:
    """Make `folder` distill's `kind` folder: create it, or take over an existing empty one,
    writing the marker before anything else. A folder with this kind's marker is left as it is;
    one with files and no marker is refused (DistillError naming it) unless `adopt` (the caller
    proved the files are distill's, e.g. `legacy`). Returns whether the marker was written."""
    folder = Path(folder)
    check(folder, kind, what, adopt)
    if owned(folder, kind):
        return False
    try:
        write_json(folder / MARKER, {
            "kind": kind, "id": uuid.uuid4().hex, "files": [],
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "distill": _version(),
        })
    except OSError as e:
        raise DistillError(f"Cannot write the {KINDS[kind]} '{folder}': {e.strerror or e}. Choose "
                           f"a writable {what} with free space.") from None
    return True


def require(folder: str | Path, kind: str, action: str) -> None:
    """Refuse (DistillError) to let `action` write into `folder` unless distill wrote it as a
    `kind` folder (its marker, or `legacy`)."""
    folder = Path(folder)
    marker = read_marker(folder)
    if marker is None and legacy(folder, kind) or marker is not None and marker["kind"] == kind:
        return
    if marker is not None:
        raise DistillError(_refusal(folder, kind, f"{action}:"))
    raise DistillError(
        f"'{folder}' is not a {KINDS[kind]} distill wrote (no valid {MARKER} marker, and not one "
        f"written before markers existed); {action} writes only into folders `distill run` "
        "wrote, so that no file of yours is overwritten. Give such a folder. Nothing was changed.")


def release(folder: str | Path) -> None:
    """Remove the marker (undoing a `claim` whose folder then received nothing)."""
    (Path(folder) / MARKER).unlink(missing_ok=True)


def owned_files(folder: str | Path) -> list[str]:
    """The names a cache's marker lists as created by distill."""
    marker = read_marker(folder) or {}
    return [n for n in marker.get("files", []) if isinstance(n, str) and "/" not in n]


def record_files(folder: str | Path, names: list[str]) -> None:
    """Set the marker's list of files distill created here, before it creates them."""
    folder = Path(folder)
    marker = read_marker(folder)
    write_json(folder / MARKER, {**marker, "files": sorted(set(names))})


def delete_owned_files(folder: str | Path) -> None:
    """Delete the files the marker lists (and only those), then empty the list."""
    folder = Path(folder)
    for name in owned_files(folder):
        (folder / name).unlink(missing_ok=True)
    record_files(folder, [])


def sweep(folder: str | Path) -> list[str]:
    """In a marked run or --seeds folder: delete orphaned temporary and checkpoint files
    (module docstring); return their names. Unmarked folders are left alone."""
    folder = Path(folder)
    if read_marker(folder) is None or read_marker(folder)["kind"] == "cache":
        return []
    gone = []
    for p in folder.iterdir():
        if (TMP.match(p.name) or CKPT_NAME.fullmatch(p.name)) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            gone.append(p.name)
    return sorted(gone)


def _version() -> str:
    from .version import __version__

    return __version__
