"""Which code a config names, and the consent needed before a command imports it.

A config value written `package.module:attr` (teacher.model, student.model, a loss term's
type, data.name for your own dataset function) is imported when its model, loss term or data
are built, and importing a module runs it. A run folder can come from anyone, so every command
that reads one (eval, report, export, run --resume) calls `require_trust` before anything is
built: a folder whose config.yaml names code is refused unless the user passes --trust-code.
`distill run CONFIG` needs no flag: running a config you chose is the consent (a config only
names code, it never runs it before then). Any other data.name names a built-in reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import RunConfig
from .errors import DistillError
from .terms import is_code_path, term_spec


@dataclass(frozen=True)
class Trust:
    """What the user allows a command that reads a run folder: importing the code its config
    names (--trust-code) and unpickling checkpoints that need code (--trust-checkpoint)."""

    code: bool = False
    checkpoint: bool = False


NO_TRUST = Trust()  # the default of every reader: no code imported, no pickle unpickled


def code_paths(cfg: RunConfig) -> list[str]:
    """'key=value' for every value of `cfg` that names code to import, in config order."""
    found = [f"{role}.model={spec.model}" for role, spec in (("teacher", cfg.teacher), ("student", cfg.student))
             if is_code_path(spec.model)]
    for name, params in cfg.loss.items():
        kind = term_spec(name, params)[0]
        if isinstance(kind, str) and is_code_path(kind):
            found.append(f"loss.{name}.type={kind}")
    if is_code_path(cfg.data.name):
        found.append(f"data.name={cfg.data.name}")
    return found


def require_trust(cfg: RunConfig, run_dir: str | Path, trusted: bool) -> None:
    """Refuse a run folder whose config names code unless `trusted` (--trust-code): call it
    before any model, loss term or data of the folder is built."""
    paths = code_paths(cfg)
    if paths and not trusted:
        raise DistillError(
            f"config.yaml of {run_dir} names code that would be imported (to build its models, "
            f"loss terms or data): {', '.join(paths)}. Importing a module runs it, and a run folder "
            "can come from anyone; pass --trust-code if you trust the folder's author."
        )
