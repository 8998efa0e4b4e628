"""The output file of `distill generate`: written so that a killed run continues, and never over
a file distill did not write.

Three files, all next to `--out FILE`:

    FILE.generate.json   the record: what made the file (model, tokenizer and prompts hashes,
                         every option) and whether it is complete; written first, atomically
    FILE.partial         completions appended batch by batch (one fsync'd write per batch)
    FILE                 FILE.partial renamed once every prompt has its line

A rerun with the same arguments finds the record and FILE.partial, keeps its whole batches
(a kill can tear the last one), and continues with the next batch: every line is then what an
uninterrupted run writes, since each batch holds the same prompts and each prompt's sampling
draws from its own seeded generator. FILE or FILE.partial without a record, or a record of
other settings, is refused: distill deletes or overwrites only what it wrote.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import DistillError
from ..io import append_line, write_json

KIND = "distill-generate"
FORMAT = 1


def record_path(out: Path) -> Path:
    return out.with_name(out.name + ".generate.json")


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _read_record(out: Path) -> dict | None:
    path = record_path(out)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or record.get("kind") != KIND:
        raise DistillError(f"'{path}' is not a record distill generate wrote; move it away or "
                           "choose another --out.")
    return record


def _differences(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:6])


def _whole_lines(path: Path) -> list[bytes]:
    """The complete (newline-ended) lines of a file; a torn last line is left out."""
    return path.read_bytes().split(b"\n")[:-1]


class GenerateFile:
    """Opens FILE for `identity` (a dict of what determines its content): `done` when it is
    already complete, else `start` (the number of prompts whose lines are kept) and `append`."""

    def __init__(self, out: str | Path, identity: dict, prompts: list[str], batch_size: int):
        self.out, self.identity, self.prompts = Path(out), identity, prompts
        self.partial, self.batch_size = partial_path(self.out), batch_size
        self.done, self.start = False, 0
        record = _read_record(self.out)
        same = record is not None and record["identity"] == identity
        if self.out.is_dir():
            raise DistillError(f"--out '{self.out}' is a folder; give the .jsonl file to write.")
        if record is not None and not same and (self.out.exists() or self.partial.exists()):
            raise DistillError(
                f"'{self.out}' was generated with other settings ({_differences(record['identity'], identity)}). "
                "Rerun with the same arguments to continue it, or choose another --out (or delete "
                f"'{self.out}', '{self.partial}' and '{record_path(self.out)}' to start over).")
        if self.out.exists():
            if not same or len(_whole_lines(self.out)) != len(prompts):
                raise DistillError(f"'{self.out}' exists and distill generate did not write it; "
                                   "choose another --out or move the file away.")
            self.done = True
            self._write_record(complete=True)
        elif self.partial.exists():
            if not same:
                raise DistillError(f"'{self.partial}' exists and distill generate did not write it; "
                                   "choose another --out or move the file away.")
            self.start = self._keep_whole_batches()
        else:
            self._write_record(complete=False)
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.partial.write_bytes(b"")

    def _write_record(self, complete: bool) -> None:
        write_json(record_path(self.out), {"kind": KIND, "format": FORMAT, "identity": self.identity,
                                           "complete": complete})

    def _keep_whole_batches(self) -> int:
        """Cut FILE.partial back to its last whole batch (its lines checked against the
        prompts); return how many prompts it holds."""
        lines = _whole_lines(self.partial)
        keep = min(len(lines), len(self.prompts)) // self.batch_size * self.batch_size
        if len(lines) >= len(self.prompts):
            keep = len(self.prompts)
        for i, line in enumerate(lines[:keep]):
            try:
                prompt = json.loads(line)["prompt"]
            except (ValueError, KeyError, TypeError):
                prompt = None
            if prompt != self.prompts[i]:
                raise DistillError(f"'{self.partial}', line {i + 1} does not hold prompt {i + 1}: "
                                   f"the file was changed. Delete it and '{record_path(self.out)}' "
                                   "to start over.")
        size = sum(len(line) + 1 for line in lines[:keep])
        with open(self.partial, "rb+") as f:  # only distill's own partial file is cut
            f.truncate(size)
            os.fsync(f.fileno())
        return keep

    def append(self, rows: list[dict]) -> None:
        """One batch's lines, in one fsync'd write (ASCII JSON: the reader splits lines on
        U+2028 too, which ensure_ascii escapes)."""
        append_line(self.partial, "\n".join(json.dumps(r) for r in rows))

    def finish(self) -> None:
        """FILE.partial becomes FILE (a rename: FILE is never seen half-written)."""
        os.replace(self.partial, self.out)
        self._write_record(complete=True)
        self.done = True
