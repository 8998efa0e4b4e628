"""A classification run's report: evaluate every saved model on held-out data, then write
report.md, report.json and PNG plots beside the run's own files (`ClassificationTask.write_report`;
a language model's report is distill.lm.report's).

The models and data are rebuilt from the run's config.yaml (distill.classifier_run.load_run), so
a report can be (re)made at any time after a run: `write_report(run_dir)`. The plots themselves
are drawn in `distill.plots`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .classifier_run import load_run, rebuild, refuse_ignored_path, weights_of
from .cost import compare_cost, read_int8
from .errors import DistillError
from .export import default_dir
from .io import write_json, write_text
from .markdown import fmt, json_safe, table
from .metrics import N_BINS, collect_logits, compute_metrics
from .plots import (
    human,
    label,
    plot_accuracy_bars,
    plot_confusion,
    plot_cost_bars,
    plot_reliability,
    plot_training_curves,
    save_png,
)
from .run_folder import require
from .run_reader import eval_target, read_run
from .runtime import resolve_device
from .stage_plan import TEACHER, all_stages, has_teacher_stage, is_teacher
from .tables import narrow_table
from .trust import NO_TRUST, Trust

__all__ = ["evaluate_run", "evaluate_target", "evaluation_table", "read_run", "rebuild", "run_cost",
           "write_report"]

DETAIL_KEYS = ("per_class_acc", "confusion", "reliability")  # kept for val-selected weights only


# ---------------------------------------------------------------- evaluation


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
    "last": metrics}}}, the stages in run order (distill.stage_plan.all_stages), with
    `distill.metrics.compute_metrics` dicts; students also get agreement and KL against the
    run's validation-selected teacher stage (with several teachers, their ensemble; a
    mutual-learning run has none, so no agreement). Per-class accuracy, the confusion matrix
    and reliability bins are kept for the "best" weights only.
    """
    if split not in ("test", "val"):
        raise DistillError(f"Unknown split '{split}'. Use 'test' or 'val'.")
    run_dir = Path(run_dir)
    cfg, data = built or rebuild(run_dir, overrides, trust)
    device = resolve_device(device)
    loader = getattr(data, split)
    teacher = None
    wanted = has_teacher_stage(cfg) and (only is None or not is_teacher(only[0]))  # teachers get no agreement
    if wanted and weights_of(run_dir, cfg, TEACHER) is not None:
        teacher = collect_logits(load_run(run_dir, TEACHER, trust, data)[0].to(device), loader, device)
    stages: dict[str, dict] = {}
    for stage in all_stages(cfg):
        for key in ("best", "last"):
            if weights_of(run_dir, cfg, stage, last=key == "last") is None or (only is not None and only != (stage, key)):
                continue
            model = load_run(run_dir, stage, trust, data, last=key == "last")[0].to(device)
            preds = collect_logits(model, loader, device)
            ref = teacher.logits if teacher is not None and not is_teacher(stage) else None
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
    (<stage>[-last].safetensors of any stage of the run; the config.yaml beside it gives the
    architecture and the data). Returns `evaluate_run`'s dict. `--data PATH` comes as the
    override data.path=PATH; on a run of the built-in data (which reads no files) it is refused."""
    run_dir, only = eval_target(target)
    refuse_ignored_path(run_dir, target, overrides)
    return evaluate_run(run_dir, overrides, split, device, only=only, trust=trust)


def run_cost(run_dir: str | Path, repeats: int = 10, device: str = "cpu", *, built: tuple | None = None,
             trust: Trust = NO_TRUST) -> dict | None:
    """compare_cost(teacher, distilled student) of a run (validation-selected weights; the
    scratch student when there is no distilled one), or None without a teacher and a student
    (a mutual-learning run has no teacher). With several teachers the teacher is their
    ensemble, all of them. With "int8": the student's export folder's quantization.json
    (cost.read_int8), when it has one."""
    run_dir = Path(run_dir)
    cfg, data = built or rebuild(run_dir, trust=trust)
    student = "distill" if weights_of(run_dir, cfg, "distill") else "scratch"
    if not has_teacher_stage(cfg) or weights_of(run_dir, cfg, TEACHER) is None or weights_of(run_dir, cfg, student) is None:
        return None
    int8 = read_int8(default_dir(run_dir, student))  # measured by `distill export --quantize int8`
    teacher, student = load_run(run_dir, "teacher", trust, data)[0], load_run(run_dir, student, trust, data)[0]
    cost = compare_cost(teacher, student, data.in_shape, device, repeats=repeats, make_input=_token_ids(data))
    return {**cost, "int8": int8} if int8 else cost


def _token_ids(data):
    """Text runs are timed on rows of real (non-pad) token ids, the longest rows they see; else None."""
    s = data.stats
    if s.get("kind") != "text":
        return None
    low = max(s["pad_id"], 3) + 1  # above the special ids of either tokenizer kind
    return lambda n, g: torch.randint(low, s["vocab_size"], (n, s["max_length"]), generator=g)


def evaluation_table(evaluation: dict):
    """A rich Table of `evaluate_run`/`evaluate_target` output, for `distill eval`: the units
    are in the title so the headers stay as narrow as the numbers (80 columns)."""
    t = narrow_table(f"evaluation on {evaluation['split']} data (acc, top-5, ECE, agreement with the teacher: %)")
    for col in ("model", "weights", "acc", "top-5", "NLL", "ECE", "agree", "KL(t‖s)"):
        t.add_column(col, justify="left" if col in ("model", "weights") else "right")
    for stage, entries in evaluation["stages"].items():
        for key, m in entries.items():
            t.add_row(label(stage), "val-selected" if key == "best" else "last epoch", fmt(m["acc"]),
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
    cfg, summary, rows = read_run(run_dir)
    require(run_dir, "run", "distill report")  # it overwrites report.md and PNGs: distill's folders only
    built = rebuild(run_dir, trust=trust)
    evaluation = evaluate_run(run_dir, device=device, built=built, trust=trust)
    cost = run_cost(run_dir, repeats=repeats, built=built, trust=trust)
    report = {**summary, "evaluation": evaluation, "cost": cost}
    write_json(run_dir / "report.json", json_safe(report))
    figures = {
        "curves": plot_training_curves(rows, all_stages(cfg)),
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
    """The confusion matrix of the final student (distill), else of the last stage evaluated
    (the stages are in run order: a student before a teacher)."""
    for stage in dict.fromkeys(["distill", *reversed(evaluation["stages"])]):
        best = evaluation["stages"].get(stage, {}).get("best")
        if best and best.get("confusion"):
            return plot_confusion(best["confusion"], f"Confusion matrix: {label(stage)}, test data")
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


# ---------------------------------------------------------------- markdown


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
            label(stage), f"{r['params']:,}", str(r.get("best_epoch", "–")), fmt(r.get("val_acc")),
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
        [label(s), fmt(e.get("best", {}).get("ece")), fmt(e.get("best", {}).get("nll"), ".4f"),
         fmt(e.get("last", {}).get("ece")), fmt(e.get("last", {}).get("nll"), ".4f")]
        for s, e in ev["stages"].items()
    ]
    out.append(table(["model", "ECE % (val-selected)", "NLL (val-selected)", "ECE % (last)", "NLL (last)"], rows))
    out += _figure(figures, "reliability", "Reliability diagrams")
    students = {s: e for s, e in ev["stages"].items() if not is_teacher(s) and "agreement" in e.get("best", {})}
    if students:
        out += ["", "## Agreement with the teacher", "",
                "Top-1 agreement: the share of samples where student and teacher predict the same class. "
                "KL(teacher ‖ student) at T = 1, nats per sample.", ""]
        rows = [
            [label(s), fmt(e["best"]["agreement"]), fmt(e["best"]["kl_teacher"], ".4f"),
             fmt(e.get("last", {}).get("agreement")), fmt(e.get("last", {}).get("kl_teacher"), ".4f")]
            for s, e in students.items()
        ]
        out.append(table(["student", "agreement % (val-selected)", "KL (val-selected)", "agreement % (last)", "KL (last)"], rows))
    if cost:
        out += ["", "## Cost", "", _cost_table(cost), "",
                f"Latency: batch 1, throughput: batch {cost['student']['batch_size']}; medians of "
                f"{cost['student']['repeats']} timed runs on {cost['student']['device']} with "
                f"{cost['student']['threads']} thread(s). Timings are of this machine only.", *_int8_note(cost)]
        out += _figure(figures, "cost", "Teacher vs. student cost")
    out += _per_class(ev, d.get("class_names"))
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
    onnx = [[f"student, ONNX {m}", f"{s['params']:,}", human(q[m]["size_bytes"], "B"), "–", fmt(q[m]["latency_ms"], ".3f"), "–"]
            for q in [cost.get("int8")] if q for m in ("fp32", "int8")]
    return table(["model", "params", "size on disk", "FLOPs / sample", "latency (ms)", "throughput (samples/s)"],
                 [row("teacher", t), row("student", s), ratio, *onnx])


def _int8_note(cost: dict) -> list[str]:
    """How the ONNX rows were measured (read from quantization.json, not measured again)."""
    q = cost.get("int8")
    if not q:
        return []
    lat, acc = q["latency"], {m: fmt(q[m]["acc"]) for m in ("fp32", "int8")}
    return ["", f"ONNX rows: {q['folder']}/quantization.json, measured by `distill export --quantize int8` "
                f"on {lat.get('measured', '?')} with onnxruntime {lat.get('onnxruntime', '?')}, {lat['threads']} "
                f"thread, batch 1, median of {lat['repeats']} (onnxruntime, not torch: compare these two rows with each other). "
                f"{q['method'].capitalize()} int8 quantization; test accuracy fp32 {acc['fp32']} %, int8 "
                f"{acc['int8']} % (the same class on {fmt(q.get('agreement'))} % of the test samples)."]


def _per_class(ev: dict, names: list[str] | None = None) -> list[str]:
    have = {s: e["best"]["per_class_acc"] for s, e in ev["stages"].items() if e.get("best", {}).get("per_class_acc")}
    if not have:
        return []
    out = ["", "## Per-class accuracy (val-selected, %)", ""]
    n = ev["num_classes"]
    if n > 20:
        return [*out, f"{n} classes: see report.json (`evaluation.stages.<stage>.best.per_class_acc`)."]
    names = names if names and len(names) == n else [str(c) for c in range(n)]  # older runs record none
    rows = [[names[c], *(fmt(v[c], ".1f") for v in have.values())] for c in range(n)]
    return [*out, table(["class", *(label(s) for s in have)], rows)]
