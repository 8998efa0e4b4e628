"""GPU check: resnet32x4 -> resnet8x4 KD on CIFAR-shaped synthetic data through distill's own
engine, fp32 vs bf16 + channels_last, online vs cached teacher. Prints one JSON line per
variant (images/s over the steady-state epochs, peak GPU memory) and a table.

    python benchmarks/gpu_check.py [--images 4096] [--batch 128] [--epochs 6] [--device cuda]

No augmentation, so the cached variant's every epoch after the first is served from the cache.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from distill.cache import open_cache
from distill.config import TrainConfig
from distill.data.loader import TensorLoader
from distill.distiller import Distiller
from distill.engine import fit
from distill.losses import KD
from distill.models import create_model


def variant(args, device, precision: str, channels_last: bool, cached: bool) -> dict:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.images, 3, 32, 32, generator=g)
    y = torch.randint(0, 100, (args.images,), generator=g)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def to_format(xb, epoch, index):
        return xb.contiguous(memory_format=fmt)

    train = TensorLoader(x, y, args.batch, shuffle=True, transform=to_format).to(device)
    val = TensorLoader(x[:256], y[:256], 256, transform=to_format).to(device)
    teacher = create_model("resnet32x4", 100, (3, 32, 32)).to(device, memory_format=fmt).eval()
    student = create_model("resnet8x4", 100, (3, 32, 32)).to(device, memory_format=fmt)
    if precision == "bf16":
        teacher = teacher.to(torch.bfloat16)  # the teacher held in bf16 as well
    distiller = Distiller(teacher, student, {"kd": (KD(T=4.0), 0.9)}, ce_weight=0.1)
    if cached:
        open_cache("memory", distiller, train, epochs=args.epochs)
    cfg = TrainConfig(epochs=args.epochs, optimizer="sgd", lr=0.05, schedule="constant",
                      precision=precision, checkpoint_every=0)
    torch.cuda.reset_peak_memory_stats(device) if device.type == "cuda" else None
    times = []
    last = [time.perf_counter()]

    def on_epoch(record):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    start = time.perf_counter()
    result = fit(distiller, train, val, cfg, device, on_epoch=on_epoch)
    steady = statistics.median(times[1:]) if len(times) > 1 else times[0]
    return {
        "precision": precision, "channels_last": channels_last, "teacher": "cached" if cached else "online",
        "images_per_s": args.images / steady, "first_epoch_s": times[0], "steady_epoch_s": steady,
        "steps": args.epochs * len(train), "wall_s": time.perf_counter() - start,
        "peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "final_train_loss": result.history[-1]["train_loss"],
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="also write the JSON list here")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    rows = []
    for precision, channels_last in (("fp32", False), ("bf16", True)):
        for cached in (False, True):
            row = variant(args, device, precision, channels_last, cached)
            print(json.dumps(row), flush=True)
            rows.append(row)
    base = rows[0]["images_per_s"]
    print("\n| precision | layout | teacher | images/s | vs fp32 online | peak MiB | first epoch s |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        mem = f"{r['peak_memory_mib']:,.0f}" if r["peak_memory_mib"] is not None else "-"
        print(f"| {r['precision']} | {'channels_last' if r['channels_last'] else 'NCHW'} | {r['teacher']} | "
              f"{r['images_per_s']:,.0f} | {r['images_per_s'] / base:.2f}x | {mem} | {r['first_epoch_s']:.2f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
