"""Devices, processes, precision, seeds, determinism and threads: the one place that touches
global torch state. Under torchrun each process reads its rank from the environment; without
it, everything below degrades to a single process and costs nothing."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading

import numpy as np
import torch


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when present (this process's local GPU under torchrun), else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(device)


# ---------------------------------------------------------------- processes (torchrun)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def is_main() -> bool:
    """Only rank 0 prints and writes files."""
    return rank() == 0


def init_distributed(device: torch.device) -> None:
    """Join torchrun's process group (gloo on CPU, nccl on CUDA), once."""
    import torch.distributed as dist

    if world_size() > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over processes (in place; a no-op in a single process)."""
    if distributed():
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def barrier() -> None:
    if distributed():
        import torch.distributed as dist

        dist.barrier()


def all_gather_objects(obj) -> list:
    """Every process's `obj`, in rank order (just [obj] in a single process)."""
    if not distributed():
        return [obj]
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------- precision

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """Mixed precision for the forward passes; fp32 is a no-op context."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


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
    """True once any process was asked to stop (so all ranks stop at the same step)."""
    if not distributed():
        return _STOP.is_set()
    import torch.distributed as dist

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([float(_STOP.is_set())], device=device)
    return bool(all_reduce_sum(flag).item())


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
