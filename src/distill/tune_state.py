"""What a search's later steps (tune_final's seed runs, tune_report's tables) read from it:
its settings and the search itself as a Protocol, so those modules need not import the search
(tune_search imports them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .config import RunConfig
from .contracts import Selection
from .tune_space import Param


@dataclass
class Settings:
    """What a search runs: N finished trials over `space`, then `seeds` seeds of the best and
    the default config; the pruner waits for `startup_trials` finished trials."""

    trials: int
    space: list[Param]
    seeds: int
    startup_trials: int = 5


class SearchState(Protocol):
    """A search into `out` (tune_search.Search): its config, settings, optuna study and task."""

    cfg: RunConfig
    out: Path
    s: Settings
    study: Any
    metric: str
    selection: Selection
    trust: bool

    def log(self, text: str) -> None: ...

    def overrides(self, seed: int, teacher: str | None, stages: list[str]) -> dict[str, Any]: ...

    def teacher(self, seed: int) -> str | None: ...
