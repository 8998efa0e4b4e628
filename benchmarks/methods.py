"""Every registered distillation method on the built-in digits demo, over several seeds.

The setting is the demo's label-scarce transfer set (data.label_fraction=0.1): the teacher
trains on every training label; the students see labels on 10% of the training inputs, and
the distilled students also learn from the teacher on all of them. Small CNNs are used so that
the feature methods have 4-D maps to hook:

* teacher: cnn, channels [32, 64], no dropout (trained on all labels); with dropout 0.2 the
  seed-2 teacher reached only 94.4% test (validation-selected), without it 96.1-97.5% on seeds
  0-2;
* student: cnn, channels [8, 16];
* feature layer pair: student `layer2` (N, 16, 2, 2), teacher `layer2` (N, 64, 2, 2).

Per seed the teacher is trained once (stages=[teacher]) and the scratch student once
(stages=[scratch]); then every method is one `distill.run` with stages=[distill] and
teacher.checkpoint=<that seed's teacher.safetensors>. Scratch and distilled students share
their initial weights, data order and schedule (the pipeline re-seeds before each stage).

Loss rule (one for all methods): every run keeps the default label term (loss.ce.weight=0.1).

* logit methods replace KD: kd is the default KD term (weight 0.9, T=4); dkd and dist run
  with loss.kd=null and their own term (DKD weight 1, DIST weight 2, their default
  hyper-parameters);
* feature methods are added to KD, as in the CRD / RepDistiller CIFAR tables (CE + KD +
  feature term): the default KD term stays and the feature term is added with the weight the
  paper or RepDistiller uses (see METHODS).

If a weight makes a run stop on a non-finite loss, the weight is halved and the method is
rerun from the first seed (all seeds use one weight); the attempts are recorded.

Writes per-method, per-seed test accuracy (at the validation-selected epoch) and last-epoch
test accuracy, the exact overrides, wall and CPU seconds, and machine information to a JSON
file, and prints a markdown table: mean ± sample std over seeds, and the paired per-seed
difference against scratch and against KD.

    python benchmarks/methods.py                 # 3 seeds, 30 epochs (about 12 min, 1 thread)
    python benchmarks/methods.py --quick         # smoke run: 1 seed, 3 epochs
    python benchmarks/methods.py --methods kd at crd --seeds 2

Training uses one torch thread (train.threads=1) unless --threads says otherwise.
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
from distill.engine import NonFiniteLoss
from distill.losses import LOSSES

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "results" / "methods.json"
QUICK_OUT = ROOT / "results" / "methods-quick.json"

LAYER = "layer2"
COMMON = [
    "data.label_fraction=0.1",
    "teacher.model=cnn", "teacher.kwargs.channels=[32,64]", "teacher.kwargs.dropout=0.0",
    "student.model=cnn", "student.kwargs.channels=[8,16]",
]
TEACHER_MIN_ACC = 95.0  # the teacher should be good for the comparison to mean anything

# name -> (weight, kind, where the weight comes from)
METHODS: dict[str, tuple[float, str, str]] = {
    "kd": (0.9, "logit", "the default KD term (CE 0.1 + KD 0.9, T=4)"),
    "dkd": (1.0, "logit", "DKD paper / mdistiller: weight 1 (alpha 1, beta 8, T 4, warm-up 20 epochs)"),
    "dist": (2.0, "logit", "DIST paper / reference: weight 2 (beta = gamma = 1, T = 1)"),
    "fitnet": (100.0, "feature", "RepDistiller / mdistiller CIFAR: 100"),
    "at": (1000.0, "feature", "RepDistiller / mdistiller CIFAR: 1000"),
    "sp": (3000.0, "feature", "SP paper / RepDistiller: 3000"),
    "rkd": (1.0, "feature", "RepDistiller: 1 (internal distance 25, angle 50)"),
    "pkt": (30000 / 64, "feature", "RepDistiller 30000 at batch 64, divided by 64 (pkt.py docstring)"),
    "vid": (1.0, "feature", "RepDistiller: 1"),
    "crd": (0.8, "feature", "RepDistiller: 0.8 (our InfoNCE-queue form, see crd.py)"),
    "nst": (50.0, "feature", "RepDistiller / mdistiller: 50"),
    "cc": (0.02, "feature", "RepDistiller: 0.02"),
    "cosine": (0.25, "feature", "PyTorch KD tutorial: 0.25"),
    "regressor": (0.25, "feature", "PyTorch KD tutorial: 0.25"),
}
MAX_HALVINGS = 6


def fmt_weight(w: float) -> str:
    return f"{w:.6g}"


def method_overrides(name: str, weight: float) -> list[str]:
    """The loss overrides of one method, on top of the default loss (ce 0.1, kd 0.9 T=4)."""
    _, kind, _ = METHODS[name]
    if name == "kd":
        return [f"loss.kd.weight={fmt_weight(weight)}"]
    if kind == "logit":
        return ["loss.kd=null", f"loss.{name}.weight={fmt_weight(weight)}"]
    return [
        f"loss.{name}.weight={fmt_weight(weight)}",
        f"loss.{name}.student={LAYER}",
        f"loss.{name}.teacher={LAYER}",
    ]


def timed_run(overrides: list[str], out_dir: Path) -> tuple[dict, float, float]:
    cfg = distill.load_config(None, overrides)
    start, cpu = time.perf_counter(), time.process_time()
    summary = distill.run(cfg, out_dir, quiet=True)
    return summary, time.perf_counter() - start, time.process_time() - cpu


def stage_record(summary: dict, stage: str) -> dict:
    r = summary["stages"][stage]
    return {k: r.get(k) for k in ("test_acc", "last_test_acc", "val_acc", "last_val_acc", "best_epoch")}


def aggregate(report: dict) -> None:
    """Fill each method's `aggregate`: means, and paired differences vs scratch and vs KD."""
    scratch = {s["seed"]: s for s in report["scratch"]["seeds"]}
    kd = {s["seed"]: s for s in report["methods"].get("kd", {}).get("seeds", [])}
    rows = {"scratch": report["scratch"], **report["methods"]}
    for res in rows.values():
        seeds = res["seeds"]
        agg = {key: mean_std([s[key] for s in seeds]) for key in ("test_acc", "last_test_acc")}
        for ref_name, ref in (("scratch", scratch), ("kd", kd)):
            for key in ("test_acc", "last_test_acc"):
                diffs = [s[key] - ref[s["seed"]][key] for s in seeds if s["seed"] in ref]
                agg[f"vs_{ref_name}_{key}"] = {
                    **mean_std(diffs), "positive": sum(d > 0 for d in diffs),
                }
        res["aggregate"] = agg


def table(report: dict) -> str:
    n = len(report["seeds"])
    lines = [
        f"| method | weight | test acc, mean ± std ({n} seed{'s' if n > 1 else ''}) "
        "| vs scratch | vs KD |",
        "|---|---:|---:|---:|---:|",
    ]
    rows = {"scratch": report["scratch"], **report["methods"]}
    for name, res in rows.items():
        agg = res.get("aggregate")
        if not agg:
            continue
        if name == "scratch":
            weight, label = "-", "scratch (CE on 10% labels)"
        else:
            weight = fmt_weight(res["weight"])
            if res["weight"] != res["paper_weight"]:
                why = "set" if res.get("attempts") == [] or len(res.get("attempts", [])) <= 1 else "halved"
                weight += f" (paper {fmt_weight(res['paper_weight'])}, {why})"
            label = {"kd": "kd (CE + KD)"}.get(
                name, f"{name} (CE + KD + {name})" if res["kind"] == "feature" else f"{name} (CE + {name})"
            )
        vs_s = "-" if name == "scratch" else fmt(agg["vs_scratch_test_acc"], signed=True)
        vs_kd = "-" if name in ("scratch", "kd") else fmt(agg["vs_kd_test_acc"], signed=True)
        lines.append(f"| {label} | {weight} | {fmt(agg['test_acc'])} | {vs_s} | {vs_kd} |")
    return "\n".join(lines)


def caption(report: dict) -> str:
    teacher = mean_std([s["test_acc"] for s in report["teacher"]["seeds"]])
    n = len(report["seeds"])
    return (
        f"Digits, label-scarce transfer set (label_fraction 0.1), {report['epochs']} epochs, "
        f"{n} seed{'s' if n > 1 else ''} ({', '.join(map(str, report['seeds']))}); teacher cnn "
        f"[32, 64] (dropout 0) test {fmt(teacher)}, student cnn [8, 16]. Test accuracy (%) at the "
        "validation-selected epoch, mean ± sample std over seeds; 'vs' columns are the mean ± "
        "std of the paired per-seed differences. Every run keeps CE (weight 0.1); logit methods "
        "replace KD (dkd, dist: loss.kd=null), feature methods are ADDED to KD (CE 0.1 + KD 0.9 "
        f"+ term), on student layer2 / teacher layer2. torch threads {report['torch_threads']}."
    )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 3 epochs")
    p.add_argument("--seeds", type=int, help="run seeds 0..N-1 (default 3; 1 with --quick)")
    p.add_argument("--epochs", type=int, help="train.epochs (default 30; 3 with --quick)")
    p.add_argument("--methods", nargs="+", choices=list(METHODS),
                   help="a subset of methods (kd always runs: it is the reference)")
    p.add_argument("--threads", type=int, default=1, help="train.threads (default 1)")
    p.add_argument("--weight", nargs="+", default=[], metavar="NAME=W",
                   help="use weight W for method NAME instead of the paper's (e.g. at=10)")
    p.add_argument("--out", type=Path, help=f"JSON output (default {DEFAULT_OUT}; "
                   f"{QUICK_OUT.name} with --quick)")
    p.add_argument("--runs-dir", type=Path, help="keep the run folders here (default: a temporary folder)")
    args = p.parse_args(argv)
    args.seeds = args.seeds or (1 if args.quick else 3)
    args.epochs = args.epochs or (3 if args.quick else 30)
    args.out = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    if args.seeds < 1 or args.epochs < 1:
        p.error("--seeds and --epochs must be >= 1")
    methods = args.methods or list(METHODS)
    args.methods = ["kd", *[m for m in methods if m != "kd"]]
    args.weights = {k: float(v) for k, _, v in (w.partition("=") for w in args.weight)}
    return args


def main(argv=None) -> int:
    missing = sorted(set(LOSSES) - set(METHODS))
    if missing:
        raise SystemExit(f"methods.py has no weight for registered method(s) {missing}; add them to METHODS")
    args = parse_args(argv)
    base = [*COMMON, f"train.epochs={args.epochs}", f"train.threads={args.threads}"]
    seeds = list(range(args.seeds))
    report = {
        "schema": 1,
        "benchmark": "methods",
        "command": " ".join([f"python benchmarks/{Path(__file__).name}",
                             *(argv if argv is not None else sys.argv[1:])]),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "epochs": args.epochs,
        "seeds": seeds,
        "threads": args.threads,
        "common_overrides": base,
        "layer": {"student": LAYER, "teacher": LAYER},
        "rule": "CE 0.1 always; logit methods replace KD; feature methods are added to KD (0.9, T=4)",
        "machine": machine_info(),
        "git": git_state(),
        "load_average_start": os.getloadavg(),
        "complete": False,
        "teacher": {"overrides": [*base, "stages=[teacher]"], "seeds": []},
        "scratch": {"overrides": [*base, "stages=[scratch]"], "seeds": []},
        "methods": {},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def save():
        report["wall_seconds"] = time.perf_counter() - t0
        args.out.write_text(json.dumps(report, indent=2) + "\n")

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f}s] {text}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="distill-methods-") as tmp:
        runs = args.runs_dir or Path(tmp)
        checkpoints = {}
        for seed in seeds:
            for stage in ("teacher", "scratch"):
                overrides = [*report[stage]["overrides"], f"seed={seed}"]
                summary, wall, cpu = timed_run(overrides, runs / f"seed{seed}" / stage)
                rec = {"seed": seed, **stage_record(summary, stage), "wall_seconds": wall, "cpu_seconds": cpu}
                report[stage]["seeds"].append(rec)
                log(f"seed {seed} {stage}: test {rec['test_acc']:.2f} (last {rec['last_test_acc']:.2f}) {wall:.1f}s")
            checkpoints[seed] = str(runs / f"seed{seed}" / "teacher" / "teacher.safetensors")
            if report["teacher"]["seeds"][-1]["test_acc"] < TEACHER_MIN_ACC:
                log(f"WARNING: seed {seed} teacher below {TEACHER_MIN_ACC}% test")
            save()

        for name in args.methods:
            paper_weight, kind, source = METHODS[name]
            weight = args.weights.get(name, paper_weight)
            res = report["methods"][name] = {
                "kind": kind, "paper_weight": paper_weight, "weight_source": source,
                "weight": weight, "attempts": [], "seeds": [],
            }
            for _ in range(MAX_HALVINGS + 1):
                res["weight"] = weight
                res["overrides"] = [*base, "stages=[distill]", "teacher.checkpoint=<seed's teacher>",
                                    *method_overrides(name, weight)]
                res["seeds"] = []
                failure = None
                for seed in seeds:
                    overrides = [*base, "stages=[distill]", f"seed={seed}",
                                 f"teacher.checkpoint={checkpoints[seed]}", *method_overrides(name, weight)]
                    out_dir = runs / f"seed{seed}" / f"{name}-w{fmt_weight(weight)}"
                    try:
                        summary, wall, cpu = timed_run(overrides, out_dir)
                    except NonFiniteLoss as e:
                        failure = {"weight": weight, "seed": seed, "error": str(e)}
                        break
                    rec = {"seed": seed, **stage_record(summary, "distill"),
                           "wall_seconds": wall, "cpu_seconds": cpu, "overrides": overrides}
                    res["seeds"].append(rec)
                    log(f"seed {seed} {name} (w {fmt_weight(weight)}): test {rec['test_acc']:.2f} "
                        f"(last {rec['last_test_acc']:.2f}) {wall:.1f}s")
                res["attempts"].append(failure or {"weight": weight, "ok": True})
                if failure is None:
                    break
                log(f"{name} diverged at weight {fmt_weight(weight)} (seed {failure['seed']}): halving")
                weight /= 2
            else:
                res["seeds"] = []
                log(f"{name}: still non-finite after {MAX_HALVINGS} halvings; left out")
            aggregate(report)
            save()

    report["torch_threads"] = torch.get_num_threads()
    report["load_average_end"] = os.getloadavg()
    report["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    report["complete"] = True
    aggregate(report)
    report["caption"] = caption(report)
    report["table"] = table(report)
    save()
    print(report["table"])
    print(f"\n{report['caption']}")
    print(f"\nWall time {report['wall_seconds']:.0f} s. JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
