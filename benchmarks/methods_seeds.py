"""The ways to distill beyond one teacher, on the built-in digits transfer set, over seeds.

For each seed, runs plain KD (the default config: CNN teacher -> 64-unit MLP student) and each
method's config in configs/methods/, with the same seed, split and schedule:

* multi_teacher: a CNN and a wide MLP teacher, the student learns from their average at T;
* per_teacher: the same teachers, one KD term per teacher (ensemble.targets=per_teacher);
* takd: CNN teacher -> small CNN assistant -> the MLP student;
* born_again: three generations of the teacher's CNN, each taught by the one before;
* dml: the MLP student and an MLP peer learning together, without a teacher;
* dml_full (only with --methods dml_full): the same with every label, the paper's setting.

Every run also trains its scratch baselines (the same initial weights, data order and
schedule without the teacher's terms), so each method's gain over scratch is paired per seed;
the gain over plain KD pairs the method's student with the default run's distilled student
of the same seed (the same MLP architecture, except born-again, whose students are CNNs).

Writes benchmarks/results/methods_seeds.json (per seed: every stage's validation-selected and
last-epoch test accuracy, seconds) and prints a markdown table of mean +- sample std.

    python benchmarks/methods_seeds.py                     # 3 seeds, every method, one thread
    python benchmarks/methods_seeds.py --seeds 1 --methods takd dml train.epochs=5
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
from common import fmt, git_state, machine_info, mean_std

ROOT = Path(__file__).resolve().parent
CONFIGS = ROOT.parent / "configs" / "methods"
DEFAULT_OUT = ROOT / "results" / "methods_seeds.json"
METHODS = {  # name -> (config file or None for the default, extra overrides)
    "plain_kd": (None, []),
    "multi_teacher": (CONFIGS / "multi_teacher.yaml", []),
    "per_teacher": (CONFIGS / "multi_teacher.yaml", ["ensemble.targets=per_teacher"]),
    "takd": (CONFIGS / "takd.yaml", []),
    "born_again": (CONFIGS / "born_again.yaml", []),
    "dml": (CONFIGS / "dml.yaml", []),
    "dml_full": (CONFIGS / "dml.yaml", ["data.label_fraction=1.0"]),  # the paper's setting: every label
}
DEFAULT_METHODS = [m for m in METHODS if m != "dml_full"]
BASELINES = {"distill": "scratch", "peer-1": "scratch-peer-1"}  # student -> its scratch twin


def seed_record(seed: int, summary: dict, seconds: float) -> dict:
    stages = {stage: {k: r.get(k) for k in ("test_acc", "last_test_acc", "val_acc", "seconds", "params")}
              for stage, r in summary["stages"].items()}
    return {"seed": seed, "wall_seconds": seconds, "stages": stages}


def _paired(records: list[dict], stage: str, other: list[dict] | None, base: str, key: str) -> dict | None:
    """mean_std of stage - base per seed (base read from `other` runs of the same seeds)."""
    other = other or records
    pairs = [(r["stages"][stage][key], o["stages"][base][key]) for r, o in zip(records, other, strict=False)
             if stage in r["stages"] and base in o["stages"]]
    if not pairs:
        return None
    diffs = [a - b for a, b in pairs]
    return {**mean_std(diffs), "positive": sum(d > 0 for d in diffs)}


def aggregate(results: dict) -> dict:
    """Per method: each stage's test accuracy, and each student's gain over its scratch twin
    and over plain KD's distilled student (paired by seed)."""
    out, plain = {}, results.get("plain_kd", {}).get("seeds")
    for name, res in results.items():
        records = res["seeds"]
        stages = list(records[0]["stages"]) if records else []
        agg = {"stages": {s: mean_std([r["stages"][s]["test_acc"] for r in records if s in r["stages"]])
                          for s in stages},
               "wall_seconds": mean_std([r["wall_seconds"] for r in records]), "gains": {}}
        for s in stages:
            if s in BASELINES or s.startswith("gen-"):  # an assistant has no scratch twin of its size
                base = BASELINES.get(s, "scratch")
                agg["gains"][s] = {"vs_scratch": _paired(records, s, None, base, "test_acc")}
                if plain and name != "plain_kd" and s == "distill":
                    agg["gains"][s]["vs_plain_kd"] = _paired(records, s, plain, "distill", "test_acc")
        out[name] = agg
    return out


def table(agg: dict) -> str:
    lines = ["| method | stage | test acc % | gain vs its scratch | gain vs plain KD | wall s/run |",
             "|---|---|---:|---:|---:|---:|"]
    for name, a in agg.items():
        for stage, stat in a["stages"].items():
            g = a["gains"].get(stage, {})
            vs = g.get("vs_scratch")
            vs_s = f"{fmt(vs, signed=True)} ({vs['positive']}/{vs['n']})" if vs else ""
            kd = g.get("vs_plain_kd")
            kd_s = f"{fmt(kd, signed=True)} ({kd['positive']}/{kd['n']})" if kd else ""
            lines.append(f"| {name} | {stage} | {fmt(stat)} | {vs_s} | {kd_s} | {a['wall_seconds']['mean']:.0f} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides for every run")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=DEFAULT_METHODS)
    p.add_argument("--threads", type=int, default=1, help="train.threads (default 1)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    report = {"schema": 1, "benchmark": "methods_seeds",
              "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "threads": args.threads,
              "overrides": args.overrides, "machine": machine_info(), "git": git_state(),
              "load_average_start": os.getloadavg(), "complete": False, "methods": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="distill-methods-") as tmp:
        for seed in range(args.seeds):  # seed-major: an interrupted benchmark still pairs its seeds
            for name in args.methods:
                path, extra = METHODS[name]
                cfg = distill.load_config(path, [f"train.threads={args.threads}", *extra, *args.overrides,
                                                 f"seed={seed}"])
                start = time.perf_counter()
                summary = distill.run(cfg, Path(tmp) / f"{name}-{seed}", quiet=True)
                res = report["methods"].setdefault(name, {"config": str(path) if path else "default",
                                                          "overrides": extra, "seeds": []})
                res["seeds"].append(seed_record(seed, summary, time.perf_counter() - start))
                report["aggregate"] = aggregate(report["methods"])
                args.out.write_text(json.dumps(report, indent=2) + "\n")
                print(f"seed {seed} {name}: {time.perf_counter() - start:.0f} s", flush=True)
    report["complete"] = True
    report["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report["aggregate"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
