"""The built-in language-model example (configs/lm/pydoc.yaml) over seeds, and its offline teacher.

1. Seeds: for each seed, one whole `distill run` of the config (teacher, scratch student,
   distilled student), timed. Reports validation and test perplexity of each stage as
   mean +- std over seeds and the paired gain (distilled - scratch; lower is better).
2. Offline teacher (seed 0's teacher): the distill stage again with the teacher's top-k
   log-probabilities stored on disk (cache.topk=K), so no teacher runs during training.
   Reports the student's seconds per epoch and final validation perplexity, online vs offline,
   the time to build the store and its bytes per token.

    python benchmarks/lm_pydoc.py                       # 3 seeds, top-16, 1 thread
    python benchmarks/lm_pydoc.py --seeds 1 --topk 8 train.epochs=1

Extra arguments are dotted key=value overrides, as for `distill run`. Writes
benchmarks/results/lm_pydoc.json (or --out) and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import distill
from common import ROOT, git_state, machine_info

CONFIG = ROOT / "configs" / "lm" / "pydoc.yaml"
STAGES = ("teacher", "scratch", "distill")


def timed_run(overrides: list[str], out: Path) -> tuple[dict, float]:
    cfg = distill.load_config(CONFIG, overrides)
    start = time.perf_counter()
    summary = distill.run(cfg, out, quiet=True)
    return summary, time.perf_counter() - start


def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "values": values}


def fmt(d: dict) -> str:
    return f"{d['mean']:.3f}" + (f" ± {d['std']:.3f}" if d["std"] is not None else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--topk", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lm_pydoc.json"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    base = [f"train.threads={args.threads}", *args.overrides]
    work = Path(tempfile.mkdtemp(prefix="lm_pydoc-"))
    runs = []
    for seed in range(args.seeds):
        summary, wall = timed_run([*base, f"seed={seed}"], work / f"seed-{seed}")
        runs.append({"seed": seed, "wall_seconds": wall, "stages": summary["stages"]})
        print(f"seed {seed}: {wall:.0f} s, val ppl " + ", ".join(
            f"{s} {summary['stages'][s]['val_ppl']:.3f}" for s in STAGES), flush=True)

    table = {s: {k: mean_std([r["stages"][s][k] for r in runs]) for k in ("val_ppl", "test_ppl")} for s in STAGES}
    gain = {k: mean_std([r["stages"]["distill"][k] - r["stages"]["scratch"][k] for r in runs])
            for k in ("val_ppl", "test_ppl")}

    teacher = work / "seed-0" / "teacher.safetensors"
    offline_overrides = [*base, "seed=0", "stages=[distill]", f"teacher.checkpoint={teacher}",
                         "cache=disk", f"cache.topk={args.topk}"]
    summary, wall = timed_run(offline_overrides, work / "offline")
    online_stage = runs[0]["stages"]["distill"]
    offline_stage = summary["stages"]["distill"]
    epochs = distill.load_config(CONFIG, base).train.epochs
    offline = {
        "k": args.topk, "store": offline_stage["cache"], "wall_seconds": wall,
        "store_seconds": wall - offline_stage["seconds"],
        "online_s_per_epoch": online_stage["seconds"] / epochs,
        "offline_s_per_epoch": offline_stage["seconds"] / epochs,
        "online_val_ppl": online_stage["val_ppl"], "offline_val_ppl": offline_stage["val_ppl"],
        "online_val_loss": online_stage["val_loss"], "offline_val_loss": offline_stage["val_loss"],
    }
    offline["time_ratio"] = offline["offline_s_per_epoch"] / offline["online_s_per_epoch"]

    result = {"config": str(CONFIG.relative_to(ROOT)), "overrides": base, "threads": args.threads,
              "runs": runs, "table": table, "gain": gain, "offline": offline,
              "machine": machine_info(), "git": git_state()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))

    print(f"\n{args.seeds} seed(s), {args.threads} thread(s); perplexity (lower is better)\n")
    print("| stage | val ppl | test ppl |\n|---|---|---|")
    for s in STAGES:
        print(f"| {s} | {fmt(table[s]['val_ppl'])} | {fmt(table[s]['test_ppl'])} |")
    print(f"| distilled - scratch | {fmt(gain['val_ppl'])} | {fmt(gain['test_ppl'])} |")
    walls = [r["wall_seconds"] for r in runs]
    print(f"\nwall time per run (teacher + scratch + distill): {fmt(mean_std(walls))} s")
    print(f"\noffline top-{args.topk} teacher ({offline['store']}; built in {offline['store_seconds']:.1f} s)\n")
    print("| teacher | s/epoch (student) | val ppl | val loss |\n|---|---|---|---|")
    print(f"| online | {offline['online_s_per_epoch']:.2f} | {offline['online_val_ppl']:.3f} | {offline['online_val_loss']:.4f} |")
    print(f"| offline top-{args.topk} | {offline['offline_s_per_epoch']:.2f} ({offline['time_ratio']:.2f}x) | "
          f"{offline['offline_val_ppl']:.3f} | {offline['offline_val_loss']:.4f} |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
