"""What a model costs to keep and to run: parameters, bytes on disk, FLOPs, latency, throughput.

Timings are medians of `repeats` timed forward passes after `warmup` untimed ones, under
`torch.inference_mode` with the model in eval mode, on a copy of the model (the caller's model
is left where and as it was). They depend on the machine and on torch's thread count, which is
recorded with them; they are measurements to report, never something a test asserts on.
"""

from __future__ import annotations

import copy
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .io import save_weights
from .models import count_flops, count_parameters

RATIO_KEYS = ("params", "size_bytes", "flops", "latency_ms", "throughput")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def _median_seconds(model, x: torch.Tensor, repeats: int, warmup: int) -> float:
    device = x.device
    for _ in range(warmup):
        model(x)
    _sync(device)
    times = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        model(x)
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def disk_size(model: torch.nn.Module) -> int:
    """Bytes of the model's state_dict written as a safetensors file (the run's format)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.safetensors"
        save_weights(model, path)
        return path.stat().st_size


def model_cost(
    model: torch.nn.Module,
    in_shape,
    device="cpu",
    *,
    repeats: int = 10,
    warmup: int = 3,
    batch_size: int = 256,
    make_input: Callable[[int, torch.Generator], torch.Tensor] | None = None,
) -> dict:
    """{params, size_bytes, flops (per sample), latency_ms (batch 1), throughput (samples/s at
    `batch_size`), batch_size, repeats, threads, device} for one model on inputs of `in_shape`
    (one sample's shape, without the batch dimension). `make_input(n, generator)` makes a
    batch of n inputs (default: standard normal; token ids need their own)."""
    device = torch.device(device)
    in_shape = tuple(in_shape)
    m = copy.deepcopy(model).cpu().eval()
    cost = {"params": count_parameters(m), "size_bytes": disk_size(m), "flops": count_flops(m, in_shape)}
    m.to(device)
    g = torch.Generator().manual_seed(0)
    make_input = make_input or (lambda n, gen: torch.randn(n, *in_shape, generator=gen))
    x1, xb = make_input(1, g).to(device), make_input(batch_size, g).to(device)
    latency = _median_seconds(m, x1, repeats, warmup)
    batch = _median_seconds(m, xb, repeats, warmup)
    cost.update(
        latency_ms=1e3 * latency,
        throughput=batch_size / batch,
        batch_size=batch_size,
        repeats=repeats,
        threads=torch.get_num_threads(),
        device=str(device),
    )
    return cost


def compare_cost(
    teacher: torch.nn.Module, student: torch.nn.Module, in_shape, device="cpu", **kwargs
) -> dict:
    """{"teacher": model_cost, "student": model_cost, "ratio": student / teacher per quantity}.

    A ratio below 1 means the student is smaller / faster for params, size_bytes, flops and
    latency_ms; above 1 means it processes more samples per second for throughput.
    """
    t = model_cost(teacher, in_shape, device, **kwargs)
    s = model_cost(student, in_shape, device, **kwargs)
    ratio = {k: (s[k] / t[k] if t[k] else None) for k in RATIO_KEYS}
    return {"teacher": t, "student": s, "ratio": ratio}


def read_int8(export_dir: str | Path) -> dict | None:
    """quantization.json of an export folder (`distill export --format onnx --quantize int8`):
    the fp32 and int8 ONNX models' test accuracy, size and batch-1 latency as measured at export
    time (onnxruntime, one thread), not measured again; None when the folder has none or it is
    not readable as one."""
    path = Path(export_dir) / "quantization.json"
    try:
        record = json.loads(path.read_text())
        fields = [record[m][k] for m in ("fp32", "int8") for k in ("size_bytes", "latency_ms", "acc")]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    numbers = all(isinstance(v, int | float) or v is None for v in fields)
    return {**record, "folder": str(export_dir)} if numbers and isinstance(record.get("latency"), dict) else None
