"""Benchmark of `distill tune` on the built-in digits demo: does a search beat the default?

Runs `distill tune --trials 30 --seeds 3` on the built-in default config (TPE, median pruning,
the objective the distilled student's validation accuracy), one thread (train.threads=1 and
OMP_NUM_THREADS=1), into a folder under /tmp (or --work). The search selects on validation only;
the best config and the default config are then re-run over seeds 0..2 with the same teacher per
seed, so the comparison on test is paired per seed.

Writes benchmarks/results/tune_digits.json (the best params, per-seed test accuracies of scratch
and distilled students for both configs, gains, wall times, trial states, machine and git
provenance) and prints a markdown table.

    OMP_NUM_THREADS=1 python benchmarks/tune_digits.py            # about 10-20 minutes on 2 cores
    python benchmarks/tune_digits.py --trials 10 --seeds 2 --out /tmp/tune.json
    python benchmarks/tune_digits.py --work /tmp/tune-bench --resume   # continue a killed benchmark

Extra arguments are dotted key=value overrides of the base config, as for `distill tune`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import distill
from common import git_state, machine_info

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "results" / "tune_digits.json"


def per_seed(folder: Path, seeds: list[int]) -> list[dict]:
    """test_acc of scratch and distill (validation-selected) per seed, from the seed runs."""
    rows = []
    for seed in seeds:
        stages = json.loads((folder / f"seed-{seed}" / "summary.json").read_text())["stages"]
        rows.append({"seed": seed, "scratch": stages["scratch"]["test_acc"], "distill": stages["distill"]["test_acc"],
                     "teacher": stages["teacher"]["test_acc"],
                     "gain": stages["distill"]["test_acc"] - stages["scratch"]["test_acc"]})
    return rows


def pm(d: dict) -> str:
    return f"{d['mean']:+.2f} ± {d['std']:.2f}" if d.get("std") is not None else f"{d['mean']:+.2f}"


def table(result: dict) -> str:
    t, d, p = result["tune"]["tuned"], result["tune"]["default"], result["tune"]["paired"]

    def acc(agg: dict, stage: str) -> str:
        s = agg["stages"][stage]["test_acc"]
        return f"{s['mean']:.2f} ± {s['std']:.2f}" if s.get("std") is not None else f"{s['mean']:.2f}"

    lines = ["| config | scratch | distilled | gain (distilled − scratch) | seeds with gain > 0 |",
             "|---|---:|---:|---:|---:|"]
    for name, agg in (("default", d), ("tuned", t)):
        g = agg["gain"]["test_acc"]
        lines.append(f"| {name} | {acc(agg, 'scratch')} | {acc(agg, 'distill')} | {pm(g)} | {g['positive']}/{g['n']} |")
    lines.append(f"| tuned − default (paired) | | {pm(p['distill'])} | {pm(p['gain'])} | |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--work", help="the search folder (default: a new folder under /tmp)")
    parser.add_argument("--resume", action="store_true", help="continue the search in --work")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args, overrides = parser.parse_known_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="tune-digits-")) / "tune"
    cfg = None if args.resume else distill.load_config(None, ["train.threads=1", *overrides])
    start = time.perf_counter()
    result = distill.tune(cfg, work, trials=args.trials, seeds=args.seeds, resume=args.resume)
    wall = time.perf_counter() - start
    teacher = json.loads((work / "teachers" / "seed-0" / "summary.json").read_text())["wall_seconds"]
    states = [r["state"].split(" ")[0] for r in result["trials"]]
    seeds = result["tuned"]["seeds"]
    record = {
        "benchmark": "tune_digits", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/tune_digits.py", *sys.argv[1:]]),
        "trials": args.trials, "seeds": seeds, "threads": 1, "overrides": overrides,
        "best": result["best"], "tied_ce_weight": "loss.ce.weight = 1 - loss.kd.weight",
        "default_params": {"loss.kd.T": 4.0, "loss.kd.weight": 0.9, "loss.ce.weight": 0.1, "train.lr": 1e-3},
        "states": {s: states.count(s) for s in dict.fromkeys(states)},
        "seconds": {"teacher_once": teacher, "trials": result["seconds"]["trials"],
                    "search": teacher + result["seconds"]["trials"], "seed_runs": result["seconds"]["final"],
                    "total": wall},
        "per_seed": {"default": per_seed(work / "default", seeds), "tuned": per_seed(work / "best", seeds)},
        "tune": {k: result[k] for k in ("tuned", "default", "paired")},
        "folder": str(work), "machine": machine_info(), "git": git_state(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(table(record))
    s = record["seconds"]
    print(f"\nbest trial {result['best']['trial']}: " + ", ".join(f"{k}={v:.4g}" for k, v in result["best"]["params"].items())
          + f" (val acc {result['best']['value']:.2f})")
    print(f"trials: {record['states']}; search wall {s['search']:.0f} s (teacher once {s['teacher_once']:.0f} s "
          f"+ {args.trials} trials {s['trials']:.0f} s); seed runs {s['seed_runs']:.0f} s; total {s['total']:.0f} s")
    print(f"wrote {args.out}; search folder {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
