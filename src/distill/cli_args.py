"""Argument types and flags that several `distill` subcommands share (cli.py, cli_tune.py)."""

from __future__ import annotations

import argparse

from .errors import short


def _at_least_one(text: str, what: str, note: str = "") -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{what} whole number >= 1, got {short(text)}{note}")
    return n


def seed_count(text: str) -> int:
    """--seeds N: a whole number >= 1 (0 or -1 must not quietly mean one run)."""
    return _at_least_one(text, "N must be a", " (1 is a single run)")


def positive(text: str) -> int:
    """A whole number >= 1 (--top-k, --trials)."""
    return _at_least_one(text, "must be a")


def trust_flags(p: argparse.ArgumentParser,
                 code: str = "read a run folder whose config names package.module:attr code") -> None:
    p.add_argument("--trust-code", action="store_true",
                   help=f"import the code to {code} (only if you trust its author)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow teacher checkpoints that need arbitrary code to unpickle")
