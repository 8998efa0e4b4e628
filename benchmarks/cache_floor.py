"""How close cached distillation comes to training the student alone, and what bounds it.

The built-in demo's models (digits; teacher CNN [64, 128], student MLP [64]; KD T = 4, weights
0.9 KD / 0.1 CE; batch 64; labels on 10% of the samples, as the demo's transfer set), four
variants trained side by side in one process, interleaved epoch by epoch:

  alone      distill: the student on CE alone (Distiller(None, student)), engine.train_epoch
  cached     distill: CE + KD, the teacher's logits from the cache (filled before timing)
  plain_ce   a plain PyTorch loop: the student on CE alone
  plain_kd   the same loop with 0.1 CE + 0.9 KD against teacher logits held in a tensor: the
             floor for any cached KD, since it does only the loss arithmetic itself

Timed: the CPU time of each training pass (time.thread_time), torch on one thread; the median
over --epochs rounds. cached/alone is the ratio the demo shows (its distill and scratch
epochs); plain_kd/plain_ce is the same ratio with no toolkit at all. Writes JSON, prints a table.

    python benchmarks/cache_floor.py [--epochs 40] [--out benchmarks/results/cache_floor.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import git_state, machine_info
from distill import KD, Distiller
from distill.cache import open_cache
from distill.config import TrainConfig
from distill.data.digits import load_digits_arrays
from distill.data.loader import TensorLoader
from distill.engine import prepare, train_epoch
from distill.losses.kd import kd_loss
from distill.models import create_model

T, KD_WEIGHT, CE_WEIGHT, BATCH, SEED = 4.0, 0.9, 0.1, 64, 0


def demo_data():
    x, y = load_digits_arrays()
    x = torch.tensor(x, dtype=torch.float32).reshape(len(x), 1, 8, 8)
    x = (x - x.mean(0)) / x.std(0).clamp(min=1e-6)
    y = torch.tensor(y)
    y[torch.arange(len(y)) % 10 != 0] = -1  # the transfer set: labels on 10%
    return x, y


def distill_variant(teacher, student, x, y, cached: bool):
    """One training pass per call, through distill's own engine (prepare + train_epoch)."""
    terms = {"kd": (KD(T=T), KD_WEIGHT)} if cached else {}
    distiller = Distiller(teacher if cached else None, student, terms, ce_weight=CE_WEIGHT if cached else 1.0)
    loader = TensorLoader(x, y, BATCH, shuffle=True, seed=SEED)
    if cached:
        cache, _ = open_cache("memory", distiller, loader, epochs=2)
        cache.fill(distiller.live.outputs, loader)
    cfg = TrainConfig(epochs=10**6, lr=1e-3, schedule="constant", checkpoint_every=0)
    training = prepare(distiller, loader, cfg, torch.device("cpu"), None)
    epoch = [0]

    def run():
        distiller.train()
        distiller.set_epoch(epoch[0])
        loader.set_epoch(epoch[0])
        train_epoch(distiller, training, loader, cfg, torch.device("cpu"), epoch[0], None, lambda: None)
        training.state.step, training.state.partial = 0, {}
        epoch[0] += 1

    return run


def plain_variant(teacher_logits, student, x, y, kd: bool):
    """The same steps as a hand-written loop: Adam, CE over labelled samples, + KD."""
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(SEED)

    def run():
        for idx in torch.randperm(len(x), generator=g).split(BATCH):
            optimizer.zero_grad(set_to_none=True)
            out = student(x[idx])
            labels = y[idx]
            ce = F.cross_entropy(out, labels, ignore_index=-1, reduction="sum") / (labels != -1).sum().clamp(min=1)
            loss = CE_WEIGHT * ce + KD_WEIGHT * kd_loss(out, teacher_logits[idx], T) if kd else ce
            loss.backward()
            optimizer.step()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cache_floor.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y = demo_data()
    torch.manual_seed(SEED)
    teacher = create_model("cnn", 10, (1, 8, 8), channels=[64, 128], dropout=0.3).eval()
    student = create_model("mlp", 10, (1, 8, 8), hidden=[64])
    with torch.no_grad():
        logits = teacher(x)
    variants = {
        "alone": distill_variant(teacher, copy.deepcopy(student), x, y, cached=False),
        "cached": distill_variant(teacher, copy.deepcopy(student), x, y, cached=True),
        "plain_ce": plain_variant(logits, copy.deepcopy(student), x, y, kd=False),
        "plain_kd": plain_variant(logits, copy.deepcopy(student), x, y, kd=True),
    }
    seconds: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.epochs + 1):  # the first round warms up and is dropped
        for name, run in variants.items():
            start = time.thread_time()
            run()
            seconds[name].append(time.thread_time() - start)
    median = {k: statistics.median(v[1:]) for k, v in seconds.items()}
    ratios = {"cached/alone": median["cached"] / median["alone"],
              "plain_kd/plain_ce": median["plain_kd"] / median["plain_ce"],
              "cached/plain_kd": median["cached"] / median["plain_kd"],
              "alone/plain_ce": median["alone"] / median["plain_ce"]}
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "threads": 1, "epochs": args.epochs,
              "machine": machine_info(), "git": git_state(), "seconds_median": median,
              "seconds": seconds, "ratios": ratios}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print("| variant | CPU s / training pass (median) |\n|---|---:|")
    for k, v in median.items():
        print(f"| {k} | {v:.4f} |")
    print("\n| ratio | value |\n|---|---:|")
    for k, v in ratios.items():
        print(f"| {k} | {v:.3f} |")
    print(f"\n(written to {args.out})")


if __name__ == "__main__":
    main()
