"""A run folder's report: evaluate every saved model on held-out data, then write report.md,
report.json and PNG plots beside the run's own files.

The models and data are rebuilt from the run's config.yaml, so a report can be (re)made at any
time after a run: `write_report(run_dir)`. The plots themselves are drawn in `distill.plots`.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .config import RunConfig, load_config
from .cost import compare_cost
from .errors import DistillError
from .io import load_weights, read_lines, write_json, write_text
from .metrics import N_BINS, collect_logits, compute_metrics
from .models import create_model
from .plots import (
    LABELS,
    STAGES,
    human,
    plot_accuracy_bars,
    plot_confusion,
    plot_cost_bars,
    plot_reliability,
    plot_training_curves,
    save_png,
)
from .run_folder import require
from .runtime import resolve_device
from .tables import narrow_table
from .trust import NO_TRUST, Trust, require_trust

DETAIL_KEYS = ("per_class_acc", "confusion", "reliability")  # kept for val-selected weights only


# ---------------------------------------------------------------- reading a run


def read_run(run_dir: str | Path) -> tuple[RunConfig, dict, list[dict]]:
    """(config, summary, metrics.jsonl rows) of a finished run folder."""
    run_dir = Path(run_dir)
    for name in ("config.yaml", "summary.json"):
        if not (run_dir / name).is_file():
            raise DistillError(
                f"'{run_dir}' has no {name}, so it is not a finished run folder. "
                "Give the folder `distill run` wrote (it holds config.yaml and summary.json)."
            )
    cfg = load_config(run_dir / "config.yaml")
    summary = json.loads((run_dir / "summary.json").read_text())
    path = run_dir / "metrics.jsonl"
    rows = read_lines(path)  # without a torn last line (a kill or a full disk mid-append)
    return cfg, summary, rows


def _weights(run_dir: Path, cfg: RunConfig, stage: str, last: bool) -> Path | None:
    path = run_dir / f"{stage}{'-last' if last else ''}.safetensors"
    if path.is_file():
        return path
    if stage == "teacher" and not last and cfg.teacher.checkpoint:  # a loaded teacher
        p = Path(cfg.teacher.checkpoint)
        return p if p.is_file() else None
    return None


def _load(cfg: RunConfig, role: str, path: Path, data, trust: Trust) -> torch.nn.Module:
    spec = cfg.teacher if role == "teacher" else cfg.student
    model = create_model(spec.model, data.num_classes, data.in_shape, **spec.kwargs)
    load_weights(model, path, trust=trust.checkpoint)  # teacher.checkpoint may be a pickle
    return model.eval()


# ---------------------------------------------------------------- evaluation


def rebuild(run_dir: str | Path, overrides: Sequence[str] = (), trust: Trust = NO_TRUST):
    """(config, Data) of a run folder: config.yaml plus `overrides`, data rebuilt from it
    (the same split: it depends on data.split_seed only). A config naming code is refused
    unless `trust.code` (distill.trust), before anything is built."""
    from .data import build_data

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise DistillError(f"'{run_dir}' has no config.yaml; give a run folder written by `distill run`.")
    cfg = load_config(path, list(overrides))
    require_trust(cfg, run_dir, trust.code)
    if cfg.task != "classification":
        raise DistillError(
            f"'{run_dir}' is a task={cfg.task} run, and reports, cost tables and ONNX/TorchScript "
            "exports are built for classifiers. For a language-model run use `distill eval RUN` "
            "(perplexity of every saved model) and `distill export RUN --format hf`; its numbers "
            "are in summary.json and metrics.jsonl."
        )
    data = build_data(cfg.data, seed=cfg.seed)
    _check_same_data(Path(run_dir), cfg, data, overrides)
    return cfg, data


def _check_same_data(run_dir: Path, cfg: RunConfig, data, overrides: Sequence[str]) -> None:
    """Warn when the files behind a run's data changed since it trained (unless the caller
    asked for other data): its numbers would no longer describe the run."""
    from .data import fingerprint

    summary = run_dir / "summary.json"
    recorded = json.loads(summary.read_text()).get("data", {}).get("sha256") if summary.is_file() else None
    if recorded and not any(o.startswith("data.") for o in overrides) and fingerprint(data) != recorded:
        print(f"warning: the data of '{run_dir}' ({cfg.data.name} at {cfg.data.path}) differ from "
              "what the run trained on; the results describe the data as they are now.", file=sys.stderr)


def evaluate_run(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    split: str = "test",
    device: str = "cpu",
    n_bins: int = N_BINS,
    only: tuple[str, str] | None = None,
    *,
    built: tuple | None = None,
    trust: Trust = NO_TRUST,
) -> dict:
    """Evaluate every model a run saved (each stage's validation-selected "best" and "last"
    weights) on its `split` ("test" or "val"), the data rebuilt from config.yaml plus
    `overrides` (e.g. ["data.path=other.npz"]); `only=(stage, "best"|"last")` evaluates one;
    `built` reuses a `rebuild(run_dir)` result; `trust` is what the user allowed (--trust-code,
    --trust-checkpoint).

    Returns {"split", "num_classes", "in_shape", "stages": {stage: {"best": metrics,
    "last": metrics}}} with `distill.metrics.compute_metrics` dicts; students also get
    agreement and KL against the run's validation-selected teacher. Per-class accuracy, the
    confusion matrix and reliability bins are kept for the "best" weights only.
    """
    if split not in ("test", "val"):
        raise DistillError(f"Unknown split '{split}'. Use 'test' or 'val'.")
    run_dir = Path(run_dir)
    cfg, data = built or rebuild(run_dir, overrides, trust)
    device = resolve_device(device)
    loader = getattr(data, split)
    teacher_path = _weights(run_dir, cfg, "teacher", last=False)
    teacher = None
    if teacher_path is not None and (only is None or only[0] != "teacher"):
        teacher = collect_logits(_load(cfg, "teacher", teacher_path, data, trust).to(device), loader, device)
    stages: dict[str, dict] = {}
    for stage in STAGES:
        for key in ("best", "last"):
            path = _weights(run_dir, cfg, stage, last=key == "last")
            if path is None or (only is not None and only != (stage, key)):
                continue
            model = _load(cfg, "teacher" if stage == "teacher" else "student", path, data, trust).to(device)
            preds = collect_logits(model, loader, device)
            ref = teacher.logits if teacher is not None and stage != "teacher" else None
            metrics = compute_metrics(preds.logits, preds.labels, ref, n_bins)
            if key == "last":
                metrics = {k: v for k, v in metrics.items() if k not in DETAIL_KEYS}
            stages.setdefault(stage, {})[key] = metrics
    if not stages:
        raise DistillError(f"'{run_dir}' holds no <stage>.safetensors weights to evaluate.")
    return {"split": split, "num_classes": data.num_classes, "in_shape": list(data.in_shape), "stages": stages}


def evaluate_target(
    target: str | Path,
    overrides: Sequence[str] = (),
    split: str = "test",
    device: str = "cpu",
    trust: Trust = NO_TRUST,
) -> dict:
    """`distill eval`: a run folder (every saved model) or one of its weights files
    (teacher/scratch/distill[-last].safetensors; the config.yaml beside it gives the
    architecture and the data). Returns `evaluate_run`'s dict."""
    target = Path(target)
    if target.is_dir():
        return evaluate_run(target, overrides, split, device, trust=trust)
    if not target.is_file():
        raise DistillError(f"'{target}' is neither a run folder nor a weights file.")
    stem = target.name.removesuffix(".safetensors")
    stage, key = (stem.removesuffix("-last"), "last") if stem.endswith("-last") else (stem, "best")
    if stage not in STAGES or not (target.parent / "config.yaml").is_file():
        raise DistillError(
            f"Cannot tell which model '{target.name}' holds. Give a run folder, or one of its "
            "teacher/scratch/distill[-last].safetensors files (its config.yaml must sit beside it)."
        )
    return evaluate_run(target.parent, overrides, split, device, only=(stage, key), trust=trust)


def run_cost(run_dir: str | Path, repeats: int = 10, device: str = "cpu", *, built: tuple | None = None,
             trust: Trust = NO_TRUST) -> dict | None:
    """compare_cost(teacher, distilled student) of a run (validation-selected weights; the
    scratch student when there is no distilled one), or None without a teacher and a student."""
    run_dir = Path(run_dir)
    cfg, data = built or rebuild(run_dir, trust=trust)
    t_path = _weights(run_dir, cfg, "teacher", last=False)
    s_path = _weights(run_dir, cfg, "distill", last=False) or _weights(run_dir, cfg, "scratch", last=False)
    if t_path is None or s_path is None:
        return None
    teacher, student = _load(cfg, "teacher", t_path, data, trust), _load(cfg, "student", s_path, data, trust)
    return compare_cost(teacher, student, data.in_shape, device, repeats=repeats)


def evaluation_table(evaluation: dict):
    """A rich Table of `evaluate_run`/`evaluate_target` output, for `distill eval`: the units
    are in the title so the headers stay as narrow as the numbers (80 columns)."""
    t = narrow_table(f"evaluation on {evaluation['split']} data (acc, top-5, ECE, agreement with the teacher: %)")
    for col in ("model", "weights", "acc", "top-5", "NLL", "ECE", "agree", "KL(t‖s)"):
        t.add_column(col, justify="left" if col in ("model", "weights") else "right")
    for stage, entries in evaluation["stages"].items():
        for key, m in entries.items():
            t.add_row(LABELS[stage], "val-selected" if key == "best" else "last epoch", fmt(m["acc"]),
                      fmt(m["top5_acc"]), fmt(m["nll"], ".4f"), fmt(m["ece"]), fmt(m.get("agreement")),
                      fmt(m.get("kl_teacher"), ".4f"))
    return t


# ---------------------------------------------------------------- the report


def write_report(run_dir: str | Path, repeats: int = 10, device: str = "cpu", trust: Trust = NO_TRUST) -> Path:
    """Evaluate a finished run on its test data and write, into the run folder, report.md,
    report.json (summary.json plus "evaluation" and "cost") and the PNGs curves.png,
    accuracy.png, reliability.png, confusion.png, cost.png. Returns the path of report.md.

    `repeats` is the number of timed forward passes per latency/throughput measurement;
    `trust` is what the user allowed (a folder naming code needs `Trust(code=True)`).
    """
    run_dir = Path(run_dir)
    _, summary, rows = read_run(run_dir)
    require(run_dir, "run", "distill report")  # it overwrites report.md and PNGs: distill's folders only
    built = rebuild(run_dir, trust=trust)
    evaluation = evaluate_run(run_dir, device=device, built=built, trust=trust)
    cost = run_cost(run_dir, repeats=repeats, built=built, trust=trust)
    report = {**summary, "evaluation": evaluation, "cost": cost}
    write_json(run_dir / "report.json", json_safe(report))
    figures = {
        "curves": plot_training_curves(rows),
        "accuracy": plot_accuracy_bars(single_run_stats(summary), f"{summary['name']}: test accuracy (seed {summary['seed']})"),
        "reliability": plot_reliability(
            {s: e["best"]["reliability"] for s, e in evaluation["stages"].items() if e.get("best", {}).get("reliability")},
        ),
        "confusion": _confusion_figure(evaluation),
        "cost": plot_cost_bars(cost) if cost else None,
    }
    written = {}
    for name, fig in figures.items():
        if fig is not None:
            save_png(fig, run_dir / f"{name}.png")
            written[name] = f"{name}.png"
    path = run_dir / "report.md"
    write_text(path, render_markdown(report, written))
    return path


def _confusion_figure(evaluation: dict):
    for stage in ("distill", "scratch", "teacher"):
        best = evaluation["stages"].get(stage, {}).get("best")
        if best and best.get("confusion"):
            return plot_confusion(best["confusion"], f"Confusion matrix: {LABELS[stage]}, test data")
    return None


def single_run_stats(summary: dict) -> dict:
    """The per-stage accuracy shape that `seeds.aggregate` produces, for one run (no spread)."""
    out = {}
    for stage, r in summary["stages"].items():
        out[stage] = {
            key: {"mean": r[key], "std": None, "n": 1, "values": [r[key]]}
            for key in ("test_acc", "last_test_acc")
            if r.get(key) is not None
        }
    return out


def json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


# ---------------------------------------------------------------- markdown


def fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(report: dict, figures: dict[str, str]) -> str:
    """report.md from report.json's content and the written figure files."""
    ev, stages, cost = report["evaluation"], report["stages"], report.get("cost")
    d = report["data"]
    out = [
        f"# {report['name']} (seed {report['seed']})",
        "",
        f"Data `{d['name']}`: {d['num_classes']} classes; {d['train']} training samples "
        f"({d['labelled']} labelled for the students, {d['unlabelled']} unlabelled), {d['val']} validation, "
        f"{d['test']} test. Device {report.get('device', '?')}; finished {report.get('finished', '?')}. "
        f"Every metric below is on the **{ev['split']}** data; model selection used validation data only.",
        "",
        "## Accuracy",
        "",
    ]
    rows = []
    for stage, r in stages.items():
        e = ev["stages"].get(stage, {})
        rows.append([
            LABELS[stage], f"{r['params']:,}", str(r.get("best_epoch", "–")), fmt(r.get("val_acc")),
            fmt(r.get("test_acc")), fmt(r.get("last_test_acc")), fmt(e.get("best", {}).get("top5_acc")),
        ])
    out.append(table(["model", "params", "selected epoch", "val acc %", "test acc % (val-selected)",
                      "test acc % (last epoch)", "top-5 % (val-selected)"], rows))
    gain = report.get("gain")
    if gain:
        out += ["", f"**Distilled − scratch:** {gain['test_acc']:+.2f} test points (val-selected), "
                    f"{gain['last_test_acc']:+.2f} at the last epoch."]
    out += _figure(figures, "accuracy", "Test accuracy by stage")
    out += ["", f"## Calibration ({N_BINS}-bin ECE, NLL)", ""]
    rows = [
        [LABELS[s], fmt(e.get("best", {}).get("ece")), fmt(e.get("best", {}).get("nll"), ".4f"),
         fmt(e.get("last", {}).get("ece")), fmt(e.get("last", {}).get("nll"), ".4f")]
        for s, e in ev["stages"].items()
    ]
    out.append(table(["model", "ECE % (val-selected)", "NLL (val-selected)", "ECE % (last)", "NLL (last)"], rows))
    out += _figure(figures, "reliability", "Reliability diagrams")
    students = {s: e for s, e in ev["stages"].items() if s != "teacher" and "agreement" in e.get("best", {})}
    if students:
        out += ["", "## Agreement with the teacher", "",
                "Top-1 agreement: the share of samples where student and teacher predict the same class. "
                "KL(teacher ‖ student) at T = 1, nats per sample.", ""]
        rows = [
            [LABELS[s], fmt(e["best"]["agreement"]), fmt(e["best"]["kl_teacher"], ".4f"),
             fmt(e.get("last", {}).get("agreement")), fmt(e.get("last", {}).get("kl_teacher"), ".4f")]
            for s, e in students.items()
        ]
        out.append(table(["student", "agreement % (val-selected)", "KL (val-selected)", "agreement % (last)", "KL (last)"], rows))
    if cost:
        out += ["", "## Cost", "", _cost_table(cost), "",
                f"Latency: batch 1, throughput: batch {cost['student']['batch_size']}; medians of "
                f"{cost['student']['repeats']} timed runs on {cost['student']['device']} with "
                f"{cost['student']['threads']} thread(s). Timings are of this machine only."]
        out += _figure(figures, "cost", "Teacher vs. student cost")
    out += _per_class(ev)
    out += _figure(figures, "confusion", "Confusion matrix")
    out += ["", "## Training curves"]
    out += _figure(figures, "curves", "Training curves")
    return "\n".join(out) + "\n"


def _figure(figures: dict, name: str, alt: str) -> list[str]:
    return ["", f"![{alt}]({figures[name]})"] if name in figures else []


def _cost_table(cost: dict) -> str:
    t, s, r = cost["teacher"], cost["student"], cost["ratio"]

    def row(name, c):
        return [name, f"{c['params']:,}", human(c["size_bytes"], "B"), human(c["flops"]),
                fmt(c["latency_ms"], ".3f"), fmt(c["throughput"], ",.0f")]

    ratio = ["student / teacher", *(fmt(r[k], ".4g", "×") for k in ("params", "size_bytes", "flops", "latency_ms", "throughput"))]
    return table(["model", "params", "size on disk", "FLOPs / sample", "latency (ms)", "throughput (samples/s)"],
                 [row("teacher", t), row("student", s), ratio])


def _per_class(ev: dict) -> list[str]:
    have = {s: e["best"]["per_class_acc"] for s, e in ev["stages"].items() if e.get("best", {}).get("per_class_acc")}
    if not have:
        return []
    out = ["", "## Per-class accuracy (val-selected, %)", ""]
    n = ev["num_classes"]
    if n > 20:
        return [*out, f"{n} classes: see report.json (`evaluation.stages.<stage>.best.per_class_acc`)."]
    rows = [[str(c), *(fmt(v[c], ".1f") for v in have.values())] for c in range(n)]
    return [*out, table(["class", *(LABELS[s] for s in have)], rows)]
