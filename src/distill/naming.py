"""Resolving names the user writes: a registry key, or an importable `package.module:attr`."""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Iterable
from pathlib import Path

from .errors import clip


def did_you_mean(key: str, options: Iterable[str]) -> str:
    """' Did you mean 'x'?' for the closest option, or '' when none is close."""
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def _search_current_directory() -> None:
    """`python -m` searches the current directory, the `distill` console script does not:
    put it last on sys.path so both find the user's code the same way (and installed
    packages still win over a stray file of the same name)."""
    cwd = str(Path.cwd())
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def plural(noun: str) -> str:
    """'model' -> 'models', 'loss' -> 'losses', 'token loss' -> 'token losses'."""
    return noun + ("es" if noun.endswith(("s", "x", "z", "ch", "sh")) else "s")


def resolve(name: str, registry: dict, kind: str, form: str, error: type[Exception]):
    """registry[name], or the attribute a `package.module:attr` path names.

    `kind` ("model", "loss") and `form` ("package.module:function") word the messages; an
    unknown name raises `error` with the closest registry key and the known ones.
    """
    if name in registry:
        return registry[name]
    shown = clip(name, 100)  # a name quoted back in an error stays short, however long it was
    if ":" in name:
        module_name, _, attr = name.partition(":")
        _search_current_directory()
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise error(
                f"Could not import {kind} '{shown}' ({clip(str(e), 200)}). Give it as {form}, importable from "
                f"the current directory ({Path.cwd()}), a folder on PYTHONPATH, or the "
                "installed packages."
            ) from e
    raise error(
        f"Unknown {kind} '{shown}'.{did_you_mean(name, registry)} Known {plural(kind)}: "
        f"{', '.join(sorted(registry))}, or a {form} path."
    )


def unknown_key(where: str, valid: list[str], key: str) -> str:
    """The message for a key that is not valid at `where`, with the closest valid one."""
    hint = did_you_mean(key, valid)
    place = f"under '{where}'" if where else "at the top level"
    return f"Unknown key '{clip(key, 100)}' {place}.{hint} Valid keys there: {', '.join(valid)}."
