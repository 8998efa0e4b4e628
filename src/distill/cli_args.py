"""Argument types and flags that several `distill` subcommands share (cli.py, cli_tune.py)."""

from __future__ import annotations

import argparse

from .errors import short


def seed_count(text: str) -> int:
    """--seeds N: a whole number >= 1 (0 or -1 must not quietly mean one run)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"N must be a whole number >= 1, got {short(text)} (1 is a single run)")
    return n


def positive(text: str) -> int:
    """A whole number >= 1 (--top-k)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {short(text)}")
    return n


def trust_flags(p: argparse.ArgumentParser,
                 code: str = "read a run folder whose config names package.module:attr code") -> None:
    p.add_argument("--trust-code", action="store_true",
                   help=f"import the code to {code} (only if you trust its author)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow teacher checkpoints that need arbitrary code to unpickle")
