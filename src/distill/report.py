"""A run folder's report: evaluate every saved model on held-out data, then write report.md,
report.json and PNG plots beside the run's own files.

The models and data are rebuilt from the run's config.yaml, so a report can be (re)made at any
time after a run: `write_report(run_dir)`. Plots are drawn on bare matplotlib `Figure`s (the
Agg canvas; no pyplot, no display, no global backend state).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

import torch
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .config import RunConfig, load_config
from .cost import compare_cost
from .errors import DistillError
from .io import _atomic, load_weights, write_json, write_text
from .metrics import N_BINS, collect_logits, compute_metrics, ece_from_bins
from .models import create_model
from .runtime import resolve_device

STAGES = ("teacher", "scratch", "distill")
LABELS = {"teacher": "teacher", "scratch": "student (scratch)", "distill": "student (distilled)"}
COLORS = {"teacher": "#4D4D4D", "scratch": "#E69F00", "distill": "#0072B2"}  # Okabe-Ito
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
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return cfg, summary, rows


def _weights(run_dir: Path, cfg: RunConfig, stage: str, last: bool) -> Path | None:
    path = run_dir / f"{stage}{'-last' if last else ''}.safetensors"
    if path.is_file():
        return path
    if stage == "teacher" and not last and cfg.teacher.checkpoint:  # a loaded teacher
        p = Path(cfg.teacher.checkpoint)
        return p if p.is_file() else None
    return None


def _load(cfg: RunConfig, role: str, path: Path, data) -> torch.nn.Module:
    spec = cfg.teacher if role == "teacher" else cfg.student
    model = create_model(spec.model, data.num_classes, data.in_shape, **spec.kwargs)
    load_weights(model, path)
    return model.eval()


# ---------------------------------------------------------------- evaluation


def rebuild(run_dir: str | Path, overrides: Sequence[str] = ()):
    """(config, Data) of a run folder: config.yaml plus `overrides`, data rebuilt from it
    (the same split: it depends on data.split_seed only)."""
    from .data import build_data

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise DistillError(f"'{run_dir}' has no config.yaml; give a run folder written by `distill run`.")
    cfg = load_config(path, list(overrides))
    return cfg, build_data(cfg.data, seed=cfg.seed)


def evaluate_run(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    split: str = "test",
    device: str = "cpu",
    n_bins: int = N_BINS,
    only: tuple[str, str] | None = None,
    *,
    built: tuple | None = None,
) -> dict:
    """Evaluate every model a run saved (each stage's validation-selected "best" and "last"
    weights) on its `split` ("test" or "val"), the data rebuilt from config.yaml plus
    `overrides` (e.g. ["data.path=other.npz"]); `only=(stage, "best"|"last")` evaluates one;
    `built` reuses a `rebuild(run_dir)` result.

    Returns {"split", "num_classes", "in_shape", "stages": {stage: {"best": metrics,
    "last": metrics}}} with `distill.metrics.compute_metrics` dicts; students also get
    agreement and KL against the run's validation-selected teacher. Per-class accuracy, the
    confusion matrix and reliability bins are kept for the "best" weights only.
    """
    if split not in ("test", "val"):
        raise DistillError(f"Unknown split '{split}'. Use 'test' or 'val'.")
    run_dir = Path(run_dir)
    cfg, data = built or rebuild(run_dir, overrides)
    device = resolve_device(device)
    loader = getattr(data, split)
    teacher_path = _weights(run_dir, cfg, "teacher", last=False)
    teacher = None
    if teacher_path is not None and (only is None or only[0] != "teacher"):
        teacher = collect_logits(_load(cfg, "teacher", teacher_path, data).to(device), loader, device)
    stages: dict[str, dict] = {}
    for stage in STAGES:
        for key in ("best", "last"):
            path = _weights(run_dir, cfg, stage, last=key == "last")
            if path is None or (only is not None and only != (stage, key)):
                continue
            model = _load(cfg, "teacher" if stage == "teacher" else "student", path, data).to(device)
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
) -> dict:
    """`distill eval`: a run folder (every saved model) or one of its weights files
    (teacher/scratch/distill[-last].safetensors; the config.yaml beside it gives the
    architecture and the data). Returns `evaluate_run`'s dict."""
    target = Path(target)
    if target.is_dir():
        return evaluate_run(target, overrides, split, device)
    if not target.is_file():
        raise DistillError(f"'{target}' is neither a run folder nor a weights file.")
    stem = target.name.removesuffix(".safetensors")
    stage, key = (stem.removesuffix("-last"), "last") if stem.endswith("-last") else (stem, "best")
    if stage not in STAGES or not (target.parent / "config.yaml").is_file():
        raise DistillError(
            f"Cannot tell which model '{target.name}' holds. Give a run folder, or one of its "
            "teacher/scratch/distill[-last].safetensors files (its config.yaml must sit beside it)."
        )
    return evaluate_run(target.parent, overrides, split, device, only=(stage, key))


def run_cost(run_dir: str | Path, repeats: int = 10, device: str = "cpu", *, built: tuple | None = None) -> dict | None:
    """compare_cost(teacher, distilled student) of a run (validation-selected weights; the
    scratch student when there is no distilled one), or None without a teacher and a student."""
    run_dir = Path(run_dir)
    cfg, data = built or rebuild(run_dir)
    t_path = _weights(run_dir, cfg, "teacher", last=False)
    s_path = _weights(run_dir, cfg, "distill", last=False) or _weights(run_dir, cfg, "scratch", last=False)
    if t_path is None or s_path is None:
        return None
    teacher, student = _load(cfg, "teacher", t_path, data), _load(cfg, "student", s_path, data)
    return compare_cost(teacher, student, data.in_shape, device, repeats=repeats)


def evaluation_table(evaluation: dict):
    """A rich Table of `evaluate_run`/`evaluate_target` output, for `distill eval`."""
    from rich.table import Table

    t = Table(title=f"evaluation on {evaluation['split']} data")
    for col in ("model", "weights", "acc %", "top-5 %", "NLL", "ECE %", "agreement %", "KL(t‖s)"):
        t.add_column(col, justify="left" if col in ("model", "weights") else "right")
    for stage, entries in evaluation["stages"].items():
        for key, m in entries.items():
            t.add_row(LABELS[stage], "val-selected" if key == "best" else "last epoch", fmt(m["acc"]),
                      fmt(m["top5_acc"]), fmt(m["nll"], ".4f"), fmt(m["ece"]), fmt(m.get("agreement")),
                      fmt(m.get("kl_teacher"), ".4f"))
    return t


# ---------------------------------------------------------------- the report


def save_png(fig, path: Path) -> None:
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _atomic(path, lambda tmp: tmp.write_bytes(buf.getvalue()))


def write_report(run_dir: str | Path, repeats: int = 10, device: str = "cpu") -> Path:
    """Evaluate a finished run on its test data and write, into the run folder, report.md,
    report.json (summary.json plus "evaluation" and "cost") and the PNGs curves.png,
    accuracy.png, reliability.png, confusion.png, cost.png. Returns the path of report.md.

    `repeats` is the number of timed forward passes per latency/throughput measurement.
    """
    run_dir = Path(run_dir)
    _, summary, rows = read_run(run_dir)
    built = rebuild(run_dir)
    evaluation = evaluate_run(run_dir, device=device, built=built)
    cost = run_cost(run_dir, repeats=repeats, built=built)
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


def human(value: float | None, unit: str = "") -> str:
    """1234567 -> '1.23 M' (SI prefixes; bytes in kB/MB as decimal units)."""
    if value is None:
        return "–"
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


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


# ---------------------------------------------------------------- plots (bare Figures, Agg)


def figure_grid(nrows: int, ncols: int, width: float, height: float, **kwargs):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kwargs)


def _log_axis(ax, unit: str | None = "") -> None:
    """Log y axis labelled 1 k, 10 k, ... (or 0.1, 1, 10) instead of 10^k and 2x10^k."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}" if unit is None else human(v, unit)))
    ax.yaxis.set_minor_formatter(NullFormatter())


def plot_training_curves(rows: list[dict]):
    """One panel per logged loss term (train, unweighted; the total is weighted) plus validation
    loss and accuracy, one line per stage, against the epoch."""
    if not rows:
        return None
    terms = sorted({k for r in rows for k in r if k.startswith("train_") and k != "train_acc"} - {"train_loss"})
    panels = [("train_loss", "train loss (weighted total)")]
    panels += [(k, f"train term '{k.removeprefix('train_')}' (unweighted)") for k in terms]
    panels += [("val_loss", "validation loss (CE)"), ("acc", "accuracy")]
    ncols = min(3, len(panels) + 1)
    nrows = math.ceil((len(panels) + 1) / ncols)  # one slot for the legend
    fig, axes = figure_grid(nrows, ncols, 4.2 * ncols, 3.1 * nrows)
    stages = [s for s in STAGES if any(r["stage"] == s for r in rows)]
    for ax, (key, title) in zip(axes.flat, panels, strict=False):
        for stage in stages:
            rs = [r for r in rows if r["stage"] == stage]
            if key == "acc":
                ax.plot([r["epoch"] for r in rs], [r["train_acc"] for r in rs], color=COLORS[stage], ls="--", lw=1)
                ax.plot([r["epoch"] for r in rs], [r["val_acc"] for r in rs], color=COLORS[stage])
                continue
            pts = [(r["epoch"], r[key]) for r in rs if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), color=COLORS[stage], marker="." if len(pts) < 15 else None)
        ax.set(title=title, xlabel="epoch", ylabel="accuracy (%)" if key == "acc" else "loss")
        ax.grid(alpha=0.3)
        values = [r[key] for r in rows if r.get(key) is not None]
        if key != "acc" and values and min(values) > 0 and max(values) / min(values) > 30:
            _log_axis(ax, None)  # losses spanning decades (the teacher's CE) need a log scale
            ax.set_ylabel("loss (log scale)")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    handles = [Line2D([], [], color=COLORS[s], label=LABELS[s]) for s in stages]
    handles += [Line2D([], [], color="gray", label="accuracy: validation"),
                Line2D([], [], color="gray", ls="--", lw=1, label="accuracy: train (labelled)")]
    list(axes.flat)[len(panels)].legend(handles=handles, loc="center", frameon=False, fontsize=10)
    fig.suptitle("Training curves by stage")
    return fig


def plot_accuracy_bars(stats: dict, title: str):
    """Grouped bars per stage: test accuracy of the validation-selected and the last-epoch
    weights; with several seeds, mean with ±1 sample-std error bars and one dot per seed."""
    fig, axes = figure_grid(1, 1, 6.4, 4.4)
    ax = axes[0, 0]
    stages = [s for s in STAGES if s in stats]
    width, seeds = 0.38, False
    for j, (key, hatch) in enumerate((("test_acc", None), ("last_test_acc", "//"))):
        for i, stage in enumerate(stages):
            st = stats[stage].get(key)
            if not st or st.get("mean") is None:
                continue
            x = i + (j - 0.5) * width
            err = st["std"] if st.get("std") is not None and st.get("n", 1) > 1 else None
            ax.bar(x, st["mean"], width, yerr=err, capsize=4, color=COLORS[stage], alpha=1.0 if j == 0 else 0.55,
                   hatch=hatch, edgecolor="white", error_kw={"elinewidth": 1.2})
            if len(st.get("values", [])) > 1:
                seeds = True
                ax.scatter([x - 0.22 * width] * len(st["values"]), st["values"], s=9, color="black", zorder=3)
            label = f"{st['mean']:.1f}" + (f" ± {err:.1f}" if err is not None else "")
            ax.text(x, (err or 0) + st["mean"] + 1, label, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(stages)), [LABELS[s] for s in stages])
    ax.set(ylabel="test accuracy (%)", ylim=(0, 110), title=title)
    ax.set_yticks(range(0, 101, 20))
    ax.grid(axis="y", alpha=0.3)
    handles = [Patch(facecolor="gray", label="validation-selected epoch"),
               Patch(facecolor="gray", alpha=0.55, hatch="//", edgecolor="white", label="last epoch")]
    if seeds:
        handles += [Line2D([], [], color="black", marker="|", ls="", markersize=10, label="± 1 std over seeds"),
                    Line2D([], [], color="black", marker=".", ls="", label="one seed")]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    return fig


def plot_reliability(bins_by_stage: dict):
    """Reliability diagrams (Guo et al. 2017): per confidence bin, accuracy (bars) against the
    diagonal of perfect calibration, the gap outlined; below, how many samples fall in each bin."""
    stages = [s for s in STAGES if s in bins_by_stage]
    if not stages:
        return None
    fig, axes = figure_grid(2, len(stages), 3.6 * len(stages), 4.9, sharex=True, height_ratios=[3, 1])
    for col, stage in enumerate(stages):
        b = bins_by_stage[stage]
        lefts, w = b["edges"][:-1], b["edges"][1] - b["edges"][0]
        acc = [a or 0.0 for a in b["accuracy"]]
        conf = [c if c is not None else 0.0 for c in b["confidence"]]
        ax, hist = axes[0, col], axes[1, col]
        ax.bar(lefts, acc, w, align="edge", color=COLORS[stage], alpha=0.85, edgecolor="white")
        ax.bar(lefts, [abs(a - c) for a, c in zip(acc, conf, strict=True)], w,
               bottom=[min(a, c) for a, c in zip(acc, conf, strict=True)], align="edge", fill=False,
               hatch="////", edgecolor="#D55E00", lw=0.8)
        ax.plot([0, 1], [0, 1], ls="--", color="black", lw=1)
        ax.set(title=f"{LABELS[stage]}\nECE {ece_from_bins(b):.2f}%", xlim=(0, 1), ylim=(0, 1))
        ax.set_ylabel("accuracy in bin" if col == 0 else None)
        ax.grid(alpha=0.3)
        hist.bar(lefts, b["count"], w, align="edge", color=COLORS[stage], edgecolor="white")
        hist.set(xlabel="confidence (top-1 probability)", ylabel="samples" if col == 0 else None)
        hist.grid(alpha=0.3)
    handles = [Patch(facecolor="#9A9A9A", label="accuracy in bin"),
               Patch(fill=False, hatch="////", edgecolor="#D55E00", label="gap to mean confidence"),
               Line2D([], [], ls="--", color="black", lw=1, label="perfect calibration")]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    fig.suptitle(f"Reliability diagrams on test data ({len(b['count'])} equal-width bins)")
    return fig


def plot_confusion(matrix: list[list[int]], title: str):
    """Rows: true class, columns: predicted; colour = share of the true class, text = count."""
    import numpy as np

    m = np.asarray(matrix)
    n = len(m)
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    size = min(max(4.5, 0.45 * n + 2), 12)
    fig, axes = figure_grid(1, 1, size + 1, size)
    ax = axes[0, 0]
    im = ax.imshow(100 * share, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(im, ax=ax, label="% of the true class", shrink=0.8)
    if n <= 20:
        for i, j in zip(*np.nonzero(m), strict=True):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    return fig


def plot_cost_bars(cost: dict):
    """Teacher vs. student, one panel per quantity (log scale), value on each bar."""
    t, s, r = cost["teacher"], cost["student"], cost["ratio"]
    panels = [
        ("params", "parameters", ""), ("size_bytes", "size on disk", "B"), ("flops", "FLOPs per sample", ""),
        ("latency_ms", "latency, batch 1 (ms)", None), ("throughput", f"throughput, batch {s['batch_size']} (samples/s)", ""),
    ]
    fig, axes = figure_grid(1, len(panels), 2.9 * len(panels), 3.4)
    for ax, (key, title, unit) in zip(axes.flat, panels, strict=True):
        values = [t[key], s[key]]
        ax.bar([0, 1], values, color=[COLORS["teacher"], COLORS["distill"]], width=0.6)
        _log_axis(ax, unit)
        ax.set_xticks([0, 1], ["teacher", "student"])
        for x, v in enumerate(values):
            ax.text(x, v * 1.15, f"{v:.3g}" if unit is None else human(v, unit), ha="center", va="bottom", fontsize=8)
        ax.set_ylim(min(values) / 3, max(values) * 8)
        ratio = r.get(key)
        ax.set_title(f"{title}\nstudent / teacher = {ratio:.3g}×" if ratio else title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Teacher vs. student cost on {s['device']} ({s['threads']} thread(s), "
                 f"medians of {s['repeats']} runs; log scales)")
    return fig
