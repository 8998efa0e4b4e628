"""Seed benchmark of the built-in digits demo: does distillation help, over several seeds?

Runs the default config (or --config) for seeds 0..N-1 in two settings:

* transfer: the label-scarce transfer set of the demo (data.label_fraction=0.1): the teacher
  trains on every training label, the students see labels on 10% of the training inputs, the
  distilled student also gets the teacher's soft targets on all of them;
* full: fully supervised (data.label_fraction=1.0): every student sees every label.

Each (setting, seed) is one `distill.run` (teacher, scratch, distill stages, the teacher trained
once and shared by the distill stage as the pipeline does), written to a temporary folder.
Only the seed varies between runs of a setting; the data split is fixed (data.split_seed).

Writes per-seed accuracies (validation-selected and last-epoch test accuracy), wall seconds,
the resolved config, the thread count and machine information to a JSON file, and prints a
markdown table of mean +- sample standard deviation over seeds, with the paired gain
(distilled - scratch, same seed) and the number of seeds on which it was positive.

    python benchmarks/digits_seeds.py                          # 5 seeds, both settings
    python benchmarks/digits_seeds.py --seeds 3 --settings transfer loss.kd.T=2
    python benchmarks/digits_seeds.py --out /tmp/x.json student.kwargs.hidden=[64]
    python benchmarks/digits_seeds.py --config configs/text/pydoc.yaml --seeds 3 \
        --transfer-fraction 0.25 --out benchmarks/results/text_pydoc_seeds.json   # the text example

Extra arguments are dotted key=value overrides, as for `distill run`. Timed runs use
train.threads=2 unless --threads or a train.threads=... override says otherwise.
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

import torch

import distill
from common import fmt, git_state, machine_info, mean_std
from distill.config import parse_override

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "results" / "digits_seeds.json"
SETTINGS = {
    "transfer": ["data.label_fraction=0.1"],
    "full": ["data.label_fraction=1.0"],
}
STAGES = ("teacher", "scratch", "distill")
# Keys this script sets itself; an override of them would silently change what is compared.
RESERVED = {("seed",), ("data", "label_fraction")}


def aggregate(seeds: list[dict]) -> dict:
    agg = {}
    for stage in STAGES:
        for key in ("test_acc", "last_test_acc"):
            values = [s[stage][key] for s in seeds if s.get(stage, {}).get(key) is not None]
            if values:
                agg[f"{stage}_{key}"] = mean_std(values)
    for key in ("test_acc", "last_test_acc"):
        gains = [s["gain"][key] for s in seeds if s.get("gain")]
        if gains:
            agg[f"gain_{key}"] = {
                **mean_std(gains),
                "positive": sum(g > 0 for g in gains),
                "negative": sum(g < 0 for g in gains),
            }
    agg["wall_seconds"] = mean_std([s["wall_seconds"] for s in seeds])
    agg["cpu_seconds"] = mean_std([s["cpu_seconds"] for s in seeds])
    return agg


def table(results: dict) -> str:
    lines = [
        "| setting | teacher | scratch | distilled | gain | gain > 0 | last-epoch gain "
        "| wall s/run | CPU s/run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        agg = res["aggregate"]
        gain = agg.get("gain_test_acc")
        positive = f"{gain['positive']}/{gain['n']}" if gain else "-"
        lines.append(
            f"| {name} (label_fraction {res['label_fraction']}) "
            f"| {fmt(agg.get('teacher_test_acc'))} | {fmt(agg.get('scratch_test_acc'))} "
            f"| {fmt(agg.get('distill_test_acc'))} | {fmt(gain, signed=True)} | {positive} "
            f"| {fmt(agg.get('gain_last_test_acc'), signed=True)} "
            f"| {agg['wall_seconds']['mean']:.1f} | {agg['cpu_seconds']['mean']:.1f} |"
        )
    return "\n".join(lines)


def seed_record(seed: int, summary: dict) -> dict:
    record = {"seed": seed, "wall_seconds": summary["wall_seconds"], "gain": summary["gain"]}
    for stage, r in summary["stages"].items():
        record[stage] = {
            k: r.get(k)
            for k in (
                "test_acc",
                "last_test_acc",
                "val_acc",
                "last_val_acc",
                "best_epoch",
                "seconds",
                "params",
            )
        }
    return record


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. loss.kd.T=2")
    p.add_argument("--seeds", type=int, default=5, help="run seeds 0..N-1 (default 5)")
    p.add_argument(
        "--settings",
        nargs="+",
        choices=list(SETTINGS),
        default=list(SETTINGS),
        help="which settings to run (default: all)",
    )
    p.add_argument("--config", help="YAML config (default: the built-in demo)")
    p.add_argument("--transfer-fraction", type=float, default=0.1,
                   help="data.label_fraction of the transfer setting (default 0.1)")
    p.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads (train.threads) unless an override sets it (default 2)",
    )
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})"
    )
    p.add_argument(
        "--runs-dir",
        type=Path,
        help="keep the run folders here (default: a temporary folder, deleted)",
    )
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    for text in args.overrides:
        key, _ = parse_override(text)
        if tuple(key) in RESERVED:
            p.error(f"'{text}': this script sets {'.'.join(key)} itself (see --seeds, --settings)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    SETTINGS["transfer"] = [f"data.label_fraction={args.transfer_fraction}"]
    base = [f"train.threads={args.threads}", *args.overrides]  # a user train.threads wins
    report = {
        "schema": 1,
        "benchmark": "digits_seeds",
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config_file": args.config,
        "overrides": args.overrides,
        "seeds": list(range(args.seeds)),
        "machine": machine_info(),
        "git": git_state(),
        "load_average_start": os.getloadavg(),
        "complete": False,
        "settings": {},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        args.out.write_text(json.dumps(report, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="distill-bench-") as tmp:
        runs = args.runs_dir or Path(tmp)
        for name in args.settings:
            overrides = [*base, *SETTINGS[name]]
            cfg = distill.load_config(args.config, overrides)
            res = report["settings"][name] = {
                "label_fraction": cfg.data.label_fraction,
                "overrides": overrides,
                "config": cfg.model_dump(mode="json"),  # seed shown is the first; it varies
                "seeds": [],
            }
            for seed in range(args.seeds):
                cfg = distill.load_config(args.config, [*overrides, f"seed={seed}"])
                start, cpu_start = time.perf_counter(), time.process_time()
                summary = distill.run(cfg, runs / f"{name}-seed{seed}", quiet=True)
                record = seed_record(seed, summary)
                record["process_wall_seconds"] = time.perf_counter() - start
                # CPU seconds of this process (all threads): less sensitive to other load.
                record["cpu_seconds"] = time.process_time() - cpu_start
                record["load_average"] = os.getloadavg()
                record["torch_threads"] = torch.get_num_threads()
                res["seeds"].append(record)
                res["aggregate"] = aggregate(res["seeds"])
                save()
                parts = [
                    f"{stage} {record[stage]['test_acc']:.2f}"
                    for stage in STAGES
                    if stage in record
                ]
                g = record["gain"]
                if g:
                    parts.append(
                        f"gain {g['test_acc']:+.2f} (last epoch {g['last_test_acc']:+.2f})"
                    )
                print(
                    f"{name} seed {seed}: {' '.join(parts)} {record['wall_seconds']:.1f}s",
                    file=sys.stderr,
                    flush=True,
                )
    report["torch_threads"] = torch.get_num_threads()
    report["load_average_end"] = os.getloadavg()
    report["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    report["complete"] = True
    save()
    print(table(report["settings"]))
    print(
        f"\n{args.seeds} seeds; mean ± sample std; gain = distilled - scratch per seed "
        f"(test accuracy at the best-validation epoch); torch threads {report['torch_threads']}; "
        f"JSON: {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
