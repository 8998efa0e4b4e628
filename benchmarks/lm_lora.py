"""A LoRA student (student.lora, distill.lm.lora) against full fine-tuning of the same student.

Both train the same base — a GPT-2 built under one seed (default 4 layers, 256 wide, 4 heads,
a 8192-token vocabulary, 128 positions) — on the same random token rows (batch 8 x 128, every
token after the first counted), with the language-model Distiller's CE step (the chunked token
loss, distill.lm.distiller.TokenPart) and the engine's optimizer (schedule.build_optimizer:
AdamW, lr 1e-3, weight decay 0.01), exactly as `distill run` builds them. LoRA: r=8, alpha=16,
all-linear (every linear layer but the output layer).

Reported for each: parameters in total and trainable (= in the optimizer), the optimizer's
state (AdamW's two moments), the bytes of the weights a checkpoint / <stage>.safetensors holds
(the state dict: for LoRA, the adapters and the base's digest), and the median seconds of one
optimizer step (zero_grad, forward, backward, step) over --steps steps after --warmup, wall
time and this process's CPU time, the two variants' steps interleaved so that a busy machine
slows both alike. torch uses one thread (--threads).

    python benchmarks/lm_lora.py [--steps 8] [--out benchmarks/results/lm_lora.json]

`measure(...)` returns the result dict (for a combined benchmark); `main` writes the JSON and
prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from common import git_state, machine_info
from distill.config import TrainConfig
from distill.contracts import Batch
from distill.lm.distiller import lm_distiller
from distill.lm.lora import create_student
from distill.lora_schema import LMStudentConfig
from distill.schedule import build_optimizer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "lm_lora.json"
LORA = {"r": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": "all-linear"}


def _variant(kwargs: dict, vocab: int, lora: dict | None, train: TrainConfig):
    spec = LMStudentConfig(model="gpt2", kwargs=kwargs, lora=lora)
    torch.manual_seed(0)  # the full student's base; a LoRA base is built under the seed itself
    model = create_student(spec, vocab, None, seed=0).train()
    distiller = lm_distiller(None, model, {}, 1.0)
    return model, distiller, build_optimizer(distiller.parameters(), train)


def _step(distiller, optimizer, batch: Batch) -> tuple[float, float]:
    """One optimizer step: (wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    optimizer.zero_grad(set_to_none=True)
    distiller(batch).loss.backward()
    optimizer.step()
    return time.perf_counter() - wall, time.process_time() - cpu


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def measure(layers: int = 4, width: int = 256, heads: int = 4, vocab: int = 8192, positions: int = 128,
            batch: int = 8, steps: int = 8, warmup: int = 2, threads: int = 1) -> dict:
    """Trainable parameters, optimizer state, saved bytes and step time of full fine-tuning and
    of LoRA on the same base, side by side."""
    torch.set_num_threads(threads)
    kwargs = {"n_layer": layers, "n_embd": width, "n_head": heads, "n_positions": positions,
              "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    train = TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (batch, positions), generator=g)
    rows = Batch(ids, mask=torch.ones_like(ids), index=torch.arange(batch))
    variants = {name: _variant(kwargs, vocab, lora, train) for name, lora in (("full", None), ("lora", LORA))}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for i in range(warmup + steps):
        for name, (_, distiller, optimizer) in variants.items():
            took = _step(distiller, optimizer, rows)
            if i >= warmup:
                times[name].append(took)
    result = {}
    for name, (model, _, optimizer) in variants.items():
        state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim()]
        result[name] = {
            "params": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for g in optimizer.param_groups for p in g["params"]),
            "optimizer_state_bytes": _bytes(state),
            "saved_bytes": _bytes(model.state_dict().values()),
            "step_seconds_wall": statistics.median(t[0] for t in times[name]),
            "step_seconds_cpu": statistics.median(t[1] for t in times[name]),
            "step_seconds_wall_all": [t[0] for t in times[name]],
        }
    full, lora = result["full"], result["lora"]
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "threads": threads,
        "model": {"arch": "gpt2", **kwargs, "vocab_size": vocab}, "batch": [batch, positions],
        "lora_config": LORA, "optimizer": "adamw", "steps": steps, "warmup": warmup,
        "full": full, "lora": lora,
        "lora/full": {k: lora[k] / full[k] for k in ("trainable", "optimizer_state_bytes", "saved_bytes",
                                                      "step_seconds_wall", "step_seconds_cpu")},
    }


def table(result: dict) -> str:
    rows = [("full fine-tuning", result["full"]), ("LoRA r=8 all-linear", result["lora"])]
    lines = ["| student | params | trainable | optimizer state MiB | state dict MiB | step s (wall) | step s (CPU) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['params']:,} | {r['trainable']:,} | {r['optimizer_state_bytes'] / 2**20:.2f} "
                     f"| {r['saved_bytes'] / 2**20:.2f} | {r['step_seconds_wall']:.3f} | {r['step_seconds_cpu']:.3f} |")
    ratio = result["lora/full"]
    lines.append(f"\nLoRA / full: trainable {ratio['trainable']:.4f}, step time {ratio['step_seconds_wall']:.2f}x "
                 f"(wall), {ratio['step_seconds_cpu']:.2f}x (CPU); {result['threads']} thread")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps of each variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    result = measure(steps=args.steps, warmup=args.warmup, threads=args.threads)
    result |= {"machine": machine_info(), "git": git_state()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(table(result))
    print(f"(written to {args.out})")


if __name__ == "__main__":
    main()
