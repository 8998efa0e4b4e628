"""GPU check of train.parallel=fsdp in bf16: a GPT-2 student distilled from a larger GPT-2 on
synthetic tokens through distill's own engine, DDP vs FSDP2 (MixedPrecisionPolicy bf16, fp32
reduce) vs FSDP2 + activation checkpointing. Prints one JSON line per variant (tokens/s over
the steps after the first two, peak GPU memory per process: the largest over the processes) and
a table. Under 5 minutes on one recent GPU with the defaults.

    torchrun --nproc_per_node=<GPUs> benchmarks/gpu_fsdp.py [--layers 12] [--width 768]
        [--vocab 32000] [--length 1024] [--batch 16] [--steps 20]

With one GPU (one process) there is nothing to shard: the fsdp variants then train exactly as
ddp does (distill.sharding), and the table says so. Not run on the CPU development machines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from distill.config import TrainConfig
from distill.data.loader import TensorLoader
from distill.engine import fit
from distill.lm.distiller import lm_distiller
from distill.lm.models import create_lm
from distill.losses.lm import ForwardKL
from distill.runtime import (
    all_gather_objects,
    init_distributed,
    is_main,
    rank,
    resolve_device,
    world_size,
)

VARIANTS = [("ddp", False), ("fsdp", False), ("fsdp", True)]  # (train.parallel, activation checkpointing)


def variant(args, device, parallel: str, checkpointing: bool) -> dict:
    torch.manual_seed(0)
    shape = {"n_positions": args.length, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    student = create_lm("gpt2", {"n_layer": args.layers, "n_embd": args.width, "n_head": args.width // 64, **shape},
                        args.vocab)
    teacher = create_lm("gpt2", {"n_layer": 2 * args.layers, "n_embd": args.width, "n_head": args.width // 64,
                                 **shape}, args.vocab).to(device, torch.bfloat16)  # held in bf16
    distiller = lm_distiller(teacher, student, {"forward_kl": (ForwardKL(), 0.5)}, ce_weight=0.5)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab, (args.batch * args.steps, args.length), generator=g)
    mask = torch.ones_like(ids)
    train = TensorLoader(ids, mask, args.batch, y_is_mask=True).to(device).shard(rank(), world_size())
    val = TensorLoader(ids[: args.batch], mask[: args.batch], args.batch, y_is_mask=True).to(device)
    val.shard(rank(), world_size())
    cfg = TrainConfig(max_steps=args.steps, eval_every=f"{args.steps} steps", checkpoint_every=0, lr=1e-4,
                      precision="bf16", parallel=parallel, activation_checkpointing=checkpointing, threads=None)
    cuda = device.type == "cuda"  # --device cpu: a smoke test of the script itself
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    stamps = []

    def on_step(_):
        if cuda:
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())

    result = fit(distiller, train, val, cfg, device, on_step=on_step)
    steps = [b - a for a, b in zip(stamps[1:], stamps[2:], strict=False)]  # after 2 warm-up steps
    peaks = all_gather_objects(torch.cuda.max_memory_allocated(device) / 2**20 if cuda else 0.0)
    return {"parallel": parallel, "activation_checkpointing": checkpointing, "processes": world_size(),
            "sharded": parallel == "fsdp" and world_size() > 1,
            "tokens_per_s": args.batch * args.length / statistics.median(steps),
            "peak_memory_mib": max(peaks), "final_train_loss": result.history[-1]["train_loss"],
            "device": torch.cuda.get_device_name(device) if cuda else "cpu"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--batch", type=int, default=16, help="global batch, rows")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default=None, help="also write the JSON list here")
    args = p.parse_args()
    device = resolve_device(args.device)
    init_distributed(device)
    rows = []
    for parallel, checkpointing in VARIANTS:
        row = variant(args, device, parallel, checkpointing)
        rows.append(row)
        if is_main():
            print(json.dumps(row), flush=True)
    if not is_main():
        return
    base = rows[0]
    print(f"\n{base['processes']} process(es) on {base['device']}"
          + ("" if base["processes"] > 1 else ": one process, nothing sharded (fsdp trains as ddp)"))
    print("| parallel | activation ckpt | tokens/s | vs ddp | peak MiB/process | vs ddp | final train loss |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['parallel']} | {r['activation_checkpointing']} | {r['tokens_per_s']:,.0f} | "
              f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x | {r['peak_memory_mib']:,.0f} | "
              f"{r['peak_memory_mib'] / max(base['peak_memory_mib'], 1e-9):.2f}x | {r['final_train_loss']:.4f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
