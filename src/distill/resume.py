"""What a run folder keeps for `--resume`: stages.json (the finished stages), metrics.jsonl
pruned back to the checkpoint, the folder lock that lets one process at a time run it, and the
error a failed write (a full disk) becomes, saying how to continue.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from .errors import DistillError
from .io import WriteFailed, read_lines, write_failure, write_text
from .runtime import all_gather_objects, is_main


def read_stages(run_dir: Path) -> dict:
    """stages.json: the finished stages' results. A damaged one names the way out."""
    path = Path(run_dir) / "stages.json"
    try:
        results = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        results, why = None, f"not valid JSON: {e}"
    else:
        why = "not a record of stages"
    if not isinstance(results, dict) or not all(isinstance(v, dict) for v in results.values()):
        raise DistillError(
            f"'{path}' is damaged ({why}); it records which stages finished. Delete exactly that "
            f"file and resume again (distill run --resume {run_dir}): every stage is trained "
            "again from the start, with the same result."
        )
    return results


def prune_metrics(path: Path, stage: str, finished: set[str], records_kept: int) -> None:
    """Keep the lines of `finished` stages and the first `records_kept` lines of `stage` (the
    evaluations its checkpoint holds: len(TrainState.history), whether they fell at epochs' ends
    or mid-epoch); drop the rest: a killed attempt's records after its checkpoint, a torn last
    line. Called before the stage's first record, so no evaluation is ever written twice."""
    if not path.exists():
        return
    keep, kept = [], 0
    for record in read_lines(path):
        if record.get("stage") in finished:
            keep.append(record)
        elif record.get("stage") == stage and kept < records_kept:
            keep.append(record)
            kept += 1
    write_text(path, "".join(json.dumps(record) + "\n" for record in keep))


LOCK = ".distill.lock"  # in a run folder: held (flock) by the process that runs it


def lock_folder(folder: Path) -> int:
    """Take the exclusive lock on `folder` (non-blocking) and return its file descriptor; closing
    it, or the process's end however it comes (kill -9 included), releases the lock. The lock file
    holds the owner's pid, for the message a second process gets."""
    path = Path(folder) / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise write_failure(e, path) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DistillError(
            f"'{folder}' is in use by another distill process (pid {owner}); wait for it or stop it."
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:  # a full disk: the lock holds all the same, only the pid goes unrecorded
        pass
    return fd


def lock_run(run_dir: Path) -> int | None:
    """Rank 0 locks the run folder (every process learns whether it could): a second
    `--resume` of a folder in use is refused, not run twice. The descriptor, or None off rank 0."""
    error, fd = None, None
    if is_main():
        try:
            fd = lock_folder(run_dir)
        except DistillError as e:
            error = str(e)
    errors = [e for e in all_gather_objects(error) if e]
    if errors:
        raise DistillError(errors[0])
    return fd


def resumable(error: OSError, out: Path) -> OSError:
    """A failed write as the error that says how to continue: what was written is intact and,
    once the run folder holds a run (config.yaml), --resume continues it."""
    failed = error if isinstance(error, WriteFailed) else write_failure(error, Path(error.filename or out))
    if failed is None or not (out / "config.yaml").exists():
        return failed or error
    advice = f"free space and continue with distill run --resume {out}"
    if "space" not in failed.reason:
        advice = f"make the folder writable (or free space) and continue with distill run --resume {out}"
    return WriteFailed(failed.path, failed.reason, advice)
