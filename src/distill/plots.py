"""The report's plots, drawn on bare matplotlib `Figure`s (the Agg canvas; no pyplot, no
display, no global backend state), and the stage names, labels and colours they share with
the report's tables.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .io import atomic_write
from .metrics import ece_from_bins

# The stages of plain KD; a run may have others (distill.stage_plan), which label() and color() name.
LABELS = {"teacher": "teacher", "scratch": "student (scratch)", "distill": "student (distilled)"}
COLORS = {"teacher": "#4D4D4D", "scratch": "#E69F00", "distill": "#0072B2"}  # Okabe-Ito
# The other stages' colours, in turn: the rest of Okabe-Ito, then Paul Tol's muted scheme
# (colour-blind safe; no yellow, which vanishes on white; no vermillion, the reliability gap's outline).
CYCLE = ("#009E73", "#CC79A7", "#56B4E9", "#882255", "#44AA99", "#999933", "#332288", "#AA4499")
RELIABILITY_COLUMNS = 4
PREFIXES = (("scratch-peer-", "peer {} (scratch)"), ("teacher-", "teacher {}"), ("assistant-", "assistant {}"),
            ("gen-", "generation {}"), ("peer-", "peer {}"))


def label(stage: str) -> str:
    """How tables and plots name a stage: 'student (distilled)', 'teacher cnn' (teacher-cnn, one
    of several teachers), 'assistant 1', 'generation 2', 'peer 1', 'peer 1 (scratch)'; an unknown
    name as it is."""
    if stage in LABELS:
        return LABELS[stage]
    for prefix, text in PREFIXES:
        if stage.startswith(prefix) and len(stage) > len(prefix):
            return text.format(stage.removeprefix(prefix))
    return stage


def color(stage: str, stages: Sequence[str] = ()) -> str:
    """A stage's colour: teacher, scratch and distill keep theirs; any other stage takes the
    next colour of CYCLE by its place among the other stages of `stages` (the stages drawn
    together, in run order), so one figure never repeats a colour; a stage not in `stages`
    gets one fixed by its name."""
    if stage in COLORS:
        return COLORS[stage]
    others = [s for s in dict.fromkeys(stages) if s not in COLORS]
    i = others.index(stage) if stage in others else zlib.crc32(stage.encode())
    return CYCLE[i % len(CYCLE)]


def human(value: float | None, unit: str = "") -> str:
    """1234567 -> '1.23 M' (SI prefixes; bytes in kB/MB as decimal units)."""
    if value is None:
        return "–"
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def save_png(fig, path: Path) -> None:
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write(path, lambda tmp: tmp.write_bytes(buf.getvalue()))


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


def plot_training_curves(rows: list[dict], order: Sequence[str] = ()):
    """One panel per logged loss term (train, unweighted; the total is weighted) plus validation
    loss and accuracy, one line per stage, against the epoch; the stages in `order` (the run's
    order) first, then any other in the order metrics.jsonl first names it."""
    if not rows:
        return None
    terms = sorted({k for r in rows for k in r if k.startswith("train_") and k != "train_acc"} - {"train_loss"})
    panels = [("train_loss", "train loss (weighted total)")]
    panels += [(k, f"train term '{k.removeprefix('train_')}' (unweighted)") for k in terms]
    panels += [("val_loss", "validation loss (CE)"), ("acc", "accuracy")]
    ncols = min(3, len(panels) + 1)
    nrows = math.ceil((len(panels) + 1) / ncols)  # one slot for the legend
    fig, axes = figure_grid(nrows, ncols, 4.2 * ncols, 3.1 * nrows)
    logged = set(r["stage"] for r in rows)
    stages = list(dict.fromkeys([*(s for s in order if s in logged), *(r["stage"] for r in rows)]))
    for ax, (key, title) in zip(axes.flat, panels, strict=False):
        for stage in stages:
            rs = [r for r in rows if r["stage"] == stage]
            if key == "acc":
                ax.plot([r["epoch"] for r in rs], [r["train_acc"] for r in rs], color=color(stage, stages), ls="--", lw=1)
                ax.plot([r["epoch"] for r in rs], [r["val_acc"] for r in rs], color=color(stage, stages))
                continue
            pts = [(r["epoch"], r[key]) for r in rs if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), color=color(stage, stages), marker="." if len(pts) < 15 else None)
        ax.set(title=title, xlabel="epoch", ylabel="accuracy (%)" if key == "acc" else "loss")
        ax.grid(alpha=0.3)
        values = [r[key] for r in rows if r.get(key) is not None]
        if key != "acc" and values and min(values) > 0 and max(values) / min(values) > 30:
            _log_axis(ax, None)  # losses spanning decades (the teacher's CE) need a log scale
            ax.set_ylabel("loss (log scale)")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    handles = [Line2D([], [], color=color(s, stages), label=label(s)) for s in stages]
    handles += [Line2D([], [], color="gray", label="accuracy: validation"),
                Line2D([], [], color="gray", ls="--", lw=1, label="accuracy: train (labelled)")]
    list(axes.flat)[len(panels)].legend(handles=handles, loc="center", frameon=False, fontsize=10)
    fig.suptitle("Training curves by stage")
    return fig


def plot_accuracy_bars(stats: dict, title: str):
    """Grouped bars per stage: test accuracy of the validation-selected and the last-epoch
    weights; with several seeds, mean with ±1 sample-std error bars and one dot per seed.
    `stats`: {stage: {key: describe}}, in run order (the order of the bars)."""
    stages = list(stats)
    fig, axes = figure_grid(1, 1, max(6.4, 1.5 * len(stages)), 4.4)
    ax = axes[0, 0]
    width, seeds = 0.38, False
    for j, (key, hatch) in enumerate((("test_acc", None), ("last_test_acc", "//"))):
        for i, stage in enumerate(stages):
            st = stats[stage].get(key)
            if not st or st.get("mean") is None:
                continue
            x = i + (j - 0.5) * width
            err = st["std"] if st.get("std") is not None and st.get("n", 1) > 1 else None
            ax.bar(x, st["mean"], width, yerr=err, capsize=4, color=color(stage, stages), alpha=1.0 if j == 0 else 0.55,
                   hatch=hatch, edgecolor="white", error_kw={"elinewidth": 1.2})
            if len(st.get("values", [])) > 1:
                seeds = True
                ax.scatter([x - 0.22 * width] * len(st["values"]), st["values"], s=9, color="black", zorder=3)
            value = f"{st['mean']:.1f}" + (f" ± {err:.1f}" if err is not None else "")
            ax.text(x, (err or 0) + st["mean"] + 1, value, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(stages)), [label(s) for s in stages], **({"fontsize": 8} if len(stages) > 4 else {}))
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
    diagonal of perfect calibration, the gap outlined; below, how many samples fall in each bin.
    `bins_by_stage`: {stage: bins}, in run order; at most RELIABILITY_COLUMNS stages a row."""
    stages = list(bins_by_stage)
    if not stages:
        return None
    ncols = min(len(stages), RELIABILITY_COLUMNS)
    nrows = math.ceil(len(stages) / ncols)
    fig, axes = figure_grid(2 * nrows, ncols, 3.6 * ncols, 4.9 * nrows, sharex=True, height_ratios=[3, 1] * nrows)
    for j in range(len(stages), nrows * ncols):  # the empty slots of the last row
        axes[2 * (j // ncols), j % ncols].set_axis_off()
        axes[2 * (j // ncols) + 1, j % ncols].set_axis_off()
    for i, stage in enumerate(stages):
        b = bins_by_stage[stage]
        lefts, w = b["edges"][:-1], b["edges"][1] - b["edges"][0]
        acc = [a or 0.0 for a in b["accuracy"]]
        conf = [c if c is not None else 0.0 for c in b["confidence"]]
        col, ax, hist = i % ncols, axes[2 * (i // ncols), i % ncols], axes[2 * (i // ncols) + 1, i % ncols]
        ax.bar(lefts, acc, w, align="edge", color=color(stage, stages), alpha=0.85, edgecolor="white")
        ax.bar(lefts, [abs(a - c) for a, c in zip(acc, conf, strict=True)], w,
               bottom=[min(a, c) for a, c in zip(acc, conf, strict=True)], align="edge", fill=False,
               hatch="////", edgecolor="#D55E00", lw=0.8)
        ax.plot([0, 1], [0, 1], ls="--", color="black", lw=1)
        ax.set(title=f"{label(stage)}\nECE {ece_from_bins(b):.2f}%", xlim=(0, 1), ylim=(0, 1))
        ax.set_ylabel("accuracy in bin" if col == 0 else None)
        ax.grid(alpha=0.3)
        hist.bar(lefts, b["count"], w, align="edge", color=color(stage, stages), edgecolor="white")
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
