"""LM distillation at scale on a CPU: peak memory per process of FSDP vs DDP (2 gloo
processes), and activation checkpointing's peak memory and step time (on / off), side by side.

Every case trains the same GPT-2 student (8 blocks, width 512, vocab 8192: 29.5M parameters)
against the same frozen GPT-2 teacher (8 blocks, width 640: 44.7M) with CE + forward KL on
synthetic token rows, through distill's own engine (`fit`, Adam), for --steps optimizer steps of
a global batch of --batch rows of --length tokens. Each case runs in fresh processes (this
script with --child, under torchrun for the 2-process cases), which:

* reset their peak RSS after imports and the process group (write 5 to /proc/self/clear_refs,
  which resets VmHWM), read the RSS there as the baseline, then build the models, train and
  read VmHWM again: the extra peak over the baseline is everything training added (the models,
  the working copy FSDP shards, gradients, Adam state, activations, communication buffers);
  torch's CPU allocations are invisible to tracemalloc, so this is measured by the kernel.
  The children run with MALLOC_MMAP_THRESHOLD_=131072: glibc then maps every allocation of
  128 KiB or more on its own and unmaps it when freed, so RSS follows the bytes alive. With
  glibc's default (a threshold that grows to 32 MiB), freed tensors stay in the heap and count
  in RSS until reused, which hides FSDP's saving: its per-block all-gather and reduce-scatter
  buffers are freed and re-allocated at every block (measured with the default: FSDP 0.96x
  DDP's peak RSS, against 0.79x here, before the teacher was sharded). `rss_between_steps_mib` is the largest RSS at the step
  boundaries (what stays alive: weights, gradients, optimizer state) and `peak_in_steps_mib`
  the peak up to the last step's end (the peak without fit's final gathers of full weights);
* time each optimizer step (on_step callbacks; the median over the steps after the first).

Cases are a list (CASES): another one (e.g. LoRA against full fine-tuning) is one more entry
and, if it needs other models, one more branch in `build`.

    python benchmarks/lm_scale.py [--steps 5] [--batch 8] [--length 128]   (~4 min on 2 cores)

torch uses 1 thread per process. Results go to benchmarks/results/lm_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from common import git_state, machine_info

RESULTS = Path(__file__).resolve().parent / "results" / "lm_scale.json"
STUDENT = {"n_layer": 8, "n_embd": 512, "n_head": 8}
TEACHER = {"n_layer": 8, "n_embd": 640, "n_head": 10}
VOCAB = 8192


@dataclass
class Case:
    name: str
    procs: int
    train: dict = field(default_factory=dict)  # TrainConfig fields over the shared ones


CASES = [
    Case("ddp", 2, {"parallel": "ddp"}),
    Case("fsdp", 2, {"parallel": "fsdp"}),
    Case("ac_off", 1, {"activation_checkpointing": False}),
    Case("ac_on", 1, {"activation_checkpointing": True}),
]


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status")


def build(case: Case, args):
    """The Distiller and loaders of a case (the same models and data in every case)."""
    import torch

    from distill.data.loader import TensorLoader
    from distill.lm.distiller import lm_distiller
    from distill.lm.models import create_lm
    from distill.losses.lm import ForwardKL
    from distill.runtime import rank, world_size

    positions = {"n_positions": args.length, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    torch.manual_seed(0)
    student = create_lm("gpt2", {**STUDENT, **positions}, VOCAB)
    teacher = create_lm("gpt2", {**TEACHER, **positions}, VOCAB)
    distiller = lm_distiller(teacher, student, {"forward_kl": (ForwardKL(), 0.5)}, ce_weight=0.5)
    g = torch.Generator().manual_seed(0)
    rows = args.batch * args.steps
    ids = torch.randint(0, VOCAB, (rows, args.length), generator=g)
    mask = torch.ones_like(ids)
    train = TensorLoader(ids, mask, args.batch, y_is_mask=True).shard(rank(), world_size())
    val = TensorLoader(ids[: args.batch], mask[: args.batch], args.batch, y_is_mask=True).shard(rank(), world_size())
    return distiller, train, val


def child(name: str, args) -> None:
    import torch

    from distill.config import TrainConfig
    from distill.engine import fit
    from distill.runtime import init_distributed, rank

    torch.set_num_threads(1)
    case = next(c for c in CASES if c.name == name)
    init_distributed(torch.device("cpu"))
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    base = _status_kib("VmRSS")
    distiller, train, val = build(case, args)
    trainable = sum(p.numel() for p in distiller.student.parameters() if p.requires_grad)
    cfg = TrainConfig(max_steps=args.steps, eval_every=f"{args.steps} steps", checkpoint_every=0, threads=1,
                      lr=1e-4, **case.train)
    stamps, between, peaks = [time.perf_counter()], [], []

    def on_step(_):
        stamps.append(time.perf_counter())
        between.append(_status_kib("VmRSS"))
        peaks.append(_status_kib("VmHWM"))

    fit(distiller, train, val, cfg, "cpu", on_step=on_step)
    steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    out = {"case": name, "rank": rank(), "peak_extra_mib": (_status_kib("VmHWM") - base) / 1024,
           "baseline_mib": base / 1024, "rss_between_steps_mib": (max(between) - base) / 1024,
           "peak_in_steps_mib": (max(peaks) - base) / 1024, "step_s": statistics.median(steps[1:]), "steps": len(steps),
           "trainable_params": trainable}
    Path(args.out_dir, f"{name}-{rank()}.json").write_text(json.dumps(out))


def free_port() -> int:
    """A port no one listens on now (other runs share this machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_case(case: Case, args) -> dict:
    me = [str(Path(__file__).resolve()), "--child", case.name, "--out-dir", args.out_dir,
          "--steps", str(args.steps), "--batch", str(args.batch), "--length", str(args.length)]
    launch = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={case.procs}",
              f"--master_port={free_port()}"] if case.procs > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}  # see the docstring
    start = time.perf_counter()
    proc = subprocess.run([*launch, *me], capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode:
        raise SystemExit(f"case {case.name} failed:\n{proc.stderr[-3000:]}")
    ranks = [json.loads(Path(args.out_dir, f"{case.name}-{r}.json").read_text()) for r in range(case.procs)]
    return {"case": case.name, "procs": case.procs, "train": case.train,
            "peak_extra_mib": max(r["peak_extra_mib"] for r in ranks),  # the largest process's
            "peak_extra_mib_per_rank": [r["peak_extra_mib"] for r in ranks],
            "rss_between_steps_mib": max(r["rss_between_steps_mib"] for r in ranks),
            "peak_in_steps_mib": max(r["peak_in_steps_mib"] for r in ranks),
            "step_s": max(r["step_s"] for r in ranks), "trainable_params": ranks[0]["trainable_params"],
            "wall_s": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=8, help="global batch, rows")
    p.add_argument("--length", type=int, default=128, help="tokens per row")
    p.add_argument("--child")
    p.add_argument("--out-dir", default=str(RESULTS.parent / "lm_scale_tmp"))
    args = p.parse_args()
    if args.child:
        return child(args.child, args)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    results = {c.name: run_case(c, args) for c in CASES}
    for f in Path(args.out_dir).glob("*.json"):  # the children's files (written by this script)
        f.unlink()
    Path(args.out_dir).rmdir()
    ratios = {"fsdp_over_ddp_peak": results["fsdp"]["peak_extra_mib"] / results["ddp"]["peak_extra_mib"],
              "fsdp_over_ddp_peak_in_steps": results["fsdp"]["peak_in_steps_mib"]
              / results["ddp"]["peak_in_steps_mib"],
              "fsdp_over_ddp_between_steps": results["fsdp"]["rss_between_steps_mib"]
              / results["ddp"]["rss_between_steps_mib"],
              "ac_on_over_off_peak": results["ac_on"]["peak_extra_mib"] / results["ac_off"]["peak_extra_mib"],
              "ac_on_over_off_step": results["ac_on"]["step_s"] / results["ac_off"]["step_s"]}
    record = {"when": datetime.now(timezone.utc).isoformat(), "machine": machine_info(), "git": git_state(),
              "threads_per_process": 1, "steps": args.steps, "batch": args.batch, "length": args.length,
              "student": STUDENT, "teacher": TEACHER, "vocab": VOCAB,
              "memory": "peak RSS (VmHWM, reset via clear_refs) over the RSS after imports, per process; "
                        "MALLOC_MMAP_THRESHOLD_=131072 (see the docstring)",
              "cases": results, "ratios": ratios}
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{'case':8} {'procs':>5} {'peak MiB/proc':>14} {'in steps':>9} {'between steps':>14} {'step s':>8} "
          f"{'trainable':>11}")
    for r in results.values():
        print(f"{r['case']:8} {r['procs']:>5} {r['peak_extra_mib']:>14.1f} {r['peak_in_steps_mib']:>9.1f} "
              f"{r['rss_between_steps_mib']:>14.1f} "
              f"{r['step_s']:>8.3f} {r['trainable_params']:>11,}")
    print(" ".join(f"{k}={v:.3f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
