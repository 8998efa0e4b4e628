"""Samples per second of distill's in-memory TensorLoader vs DataLoader over a TensorDataset.

Both loaders shuffle and yield the same batches' worth of data; the loop only touches each
batch (as a training step would first do). Digits-sized (1,797 x 64 floats) and MNIST-sized
(60,000 x 1 x 28 x 28 uint8) data, batch sizes 64 and 256, one thread, median of 5 epochs.

    python benchmarks/loader.py [--out benchmarks/results/loader.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from distill.data.loader import TensorLoader


def epoch_seconds(loader, epochs: int = 5) -> float:
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for batch in loader:
            batch.inputs.sum() if hasattr(batch, "inputs") else batch[0].sum()  # touch the batch
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/loader.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    datasets = {
        "digits-sized": (torch.randn(1797, 64), torch.randint(0, 10, (1797,))),
        "mnist-sized": (torch.randint(0, 256, (60000, 1, 28, 28), dtype=torch.uint8),
                        torch.randint(0, 10, (60000,))),
    }
    rows = []
    for name, (x, y) in datasets.items():
        for bs in (64, 256):
            dl = DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=True)
            tl = TensorLoader(x, y, batch_size=bs, shuffle=True)
            t_dl, t_tl = epoch_seconds(dl), epoch_seconds(tl)
            rows.append({
                "data": name, "batch_size": bs, "samples": len(x),
                "dataloader_samples_per_s": len(x) / t_dl,
                "tensorloader_samples_per_s": len(x) / t_tl,
                "speedup": t_dl / t_tl,
            })
    result = {"threads": 1, "torch": torch.__version__, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("| data | batch | DataLoader samples/s | TensorLoader samples/s | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['data']} | {r['batch_size']} | {r['dataloader_samples_per_s']:,.0f} | "
              f"{r['tensorloader_samples_per_s']:,.0f} | {r['speedup']:.1f}x |")


if __name__ == "__main__":
    main()
