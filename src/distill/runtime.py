"""Devices, seeds, determinism and threads: one place that touches global torch state."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading

import numpy as np
import torch


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure(seed: int, deterministic: bool = False, threads: int | None = None) -> None:
    """Apply a run's seed, determinism and thread settings."""
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        # cuBLAS needs this workspace setting to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(deterministic, warn_only=False)
    torch.backends.cudnn.deterministic = deterministic
    seed_everything(seed)


# ---------------------------------------------------------------- stopping cleanly

_STOP = threading.Event()


class Interrupted(Exception):
    """Training stopped on Ctrl-C or SIGTERM (after writing a checkpoint when it had one)."""

    def __init__(self, checkpointed: bool):
        super().__init__("interrupted")
        self.checkpointed = checkpointed


def stop_requested() -> bool:
    return _STOP.is_set()


def request_stop(*_) -> None:
    """Signal handler: finish the current step, checkpoint, and stop."""
    _STOP.set()


@contextlib.contextmanager
def stop_handlers():
    """Within the block, Ctrl-C and SIGTERM ask for a clean stop at the next step boundary
    (checkpoint, then Interrupted) instead of killing the process mid-write."""
    _STOP.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
