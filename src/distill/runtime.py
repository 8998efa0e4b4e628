"""Devices, processes, precision, seeds, determinism and threads: the one place that touches
global torch state. Under torchrun each process reads its rank from the environment; without
it, everything below degrades to a single process and costs nothing."""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import signal
import threading

import numpy as np
import torch

from .errors import ConfigError


def resolve_device(device: str = "auto", setting: str = "train.device") -> torch.device:
    """'auto' picks CUDA when present (this process's local GPU under torchrun), else the CPU.

    Anything else must name a device this torch and this machine have: a typo, a CUDA or MPS
    device on a torch without it, or an index past the devices present raises a ConfigError
    naming `setting`, before a run creates any file (not a traceback at the first .to())."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"{setting}={device} is not a device name. Use auto, cpu, cuda, cuda:N (N counts "
            "from 0) or mps."
        ) from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "cuda":
        return _cuda_device(dev, setting, device)
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            built = "is built with MPS but finds no usable Apple GPU" if torch.backends.mps.is_built() else "has no MPS"
            raise ConfigError(
                f"{setting}={device} but this torch {built} (torch.backends.mps.is_available() is "
                f"False; MPS needs Apple silicon and macOS 12.3+); use {setting}=cpu or auto."
            )
        return dev
    raise ConfigError(
        f"{setting}={device}: distill runs on cpu, cuda[:N] or mps, not '{dev.type}'. Use "
        f"{setting}=auto, cpu, cuda or mps."
    )


def _cuda_device(dev: torch.device, setting: str, given: str) -> torch.device:
    """The CUDA device to use, checked against the GPUs present (and torchrun's LOCAL_RANK)."""
    if not torch.cuda.is_available():
        raise ConfigError(
            f"{setting}={given} but this torch has no CUDA (torch.cuda.is_available() is False; "
            f"torch {torch.__version__}); use {setting}=cpu or auto, or install a CUDA build of torch."
        )
    count = torch.cuda.device_count()
    index = dev.index
    if index is None and world_size() > 1:
        index = int(os.environ.get("LOCAL_RANK", 0))
        if index >= count:
            raise ConfigError(
                f"torchrun started local rank {index} but this machine has {count} CUDA device(s); "
                "start at most one process per GPU (--nproc-per-node)."
            )
    if index is not None and index >= count:
        raise ConfigError(
            f"{setting}={given} but this machine has {count} CUDA device(s) (cuda:0 to "
            f"cuda:{count - 1}); use {setting}=cuda, auto or one of those."
        )
    return torch.device("cuda", index) if index is not None else torch.device("cuda")


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
        # torn down before the interpreter's own teardown: a process that exits with gloo's
        # threads still running can abort ("terminate called without an active exception",
        # SIGABRT), and torchrun then reports a finished run as failed
        atexit.register(dist.destroy_process_group)


def distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over processes (in place; a no-op in a single process)."""
    if distributed():
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def wrap_ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`module` in DistributedDataParallel under torchrun (one process: `module` itself)."""
    if not distributed():
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


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


def stop_between_runs() -> None:
    """Between two runs of one command (trials, seed runs): a Ctrl-C or SIGTERM that came after
    the last run's last stop check stops here, before the next run's handlers clear it."""
    if stop_requested():
        raise Interrupted(checkpointed=False)


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
