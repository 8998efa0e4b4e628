"""Several seeds of one experiment: mean ± sample std per stage, and the paired gain.

The scratch and distilled students of one seed share initial weights, data order and split, so
the gain distilled - scratch is computed per seed (paired) and summarised by its mean, sample
standard deviation and a 95% Student-t interval, mean ± t(0.975, n-1) * sd / sqrt(n).
The t quantile comes from scipy.stats.t (scipy is installed with scikit-learn); without scipy,
from a table for df 1..30 and the normal 1.96 beyond (slightly narrow there: t(0.975, 31) = 2.04).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from .config import RunConfig, load_config, validate
from .errors import DistillError
from .io import write_json, write_text
from .markdown import fmt, json_safe, table
from .plots import COLORS, LABELS, STAGES, figure_grid, plot_accuracy_bars, save_png
from .run_folder import require
from .saved_config import migrate
from .tasks import task_of_run
from .trust import NO_TRUST, Trust, require_trust

# What summary.json's "primary" (the task's Selection) was before summaries recorded it.
DEFAULT_PRIMARY = {"metric": "acc", "lower_is_better": False}
PREFIXES = ("val_", "test_", "last_test_")  # the per-stage keys aggregated, for every metric a run recorded
EVAL_KEYS = ("top5_acc", "ece", "nll", "agreement", "kl_teacher")  # from report.json, when present
# Two-sided 95% quantiles t(0.975, df), df = 1..30 (the fallback when scipy is missing).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
        2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
        2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile(df: int) -> tuple[float, str]:
    """(t(0.975, df), source): the two-sided 95% Student-t quantile and where it came from."""
    try:
        from scipy.stats import t
    except ImportError:
        return (T975[df - 1] if df <= len(T975) else 1.96), "table (normal 1.96 beyond df 30)"
    return float(t.ppf(0.975, df)), "scipy.stats.t"


def describe(values: list[float]) -> dict:
    """{"mean", "std" (sample, n-1; None for n < 2), "n", "values"}."""
    values = [float(v) for v in values]
    return {
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
        "values": values,
    }


def interval(values: list[float]) -> dict:
    """`describe` plus the 95% t-interval of the mean: ci95 [lo, hi], half_width, t, df
    (None for n < 2)."""
    out = describe(values)
    n = out["n"]
    out.update(ci95=None, half_width=None, t=None, df=None)
    if n > 1:
        t, _ = t_quantile(n - 1)
        half = t * out["std"] / math.sqrt(n)
        out.update(ci95=[out["mean"] - half, out["mean"] + half], half_width=half, t=t, df=n - 1)
    return out


def primary(summaries: list[dict]) -> dict:
    """The {"metric", "lower_is_better"} the runs were selected by (summary.json's "primary",
    the task's Selection); runs selected by different metrics are not one experiment."""
    kinds = {(p["metric"], p["lower_is_better"]) for p in (s.get("primary", DEFAULT_PRIMARY) for s in summaries)}
    if len(kinds) > 1:
        raise DistillError(f"These runs pick their best epoch by different metrics ({sorted(kinds)}); "
                           "aggregate the runs of one task only.")
    return summaries[0].get("primary", DEFAULT_PRIMARY)


def _stage_stats(rows: list[dict], main: tuple[str, ...]) -> dict:
    """describe() of the primary metric's keys (always) and of every other val_/test_/last_test_
    number the rows hold (an LM's NLL and next-token accuracy beside its perplexity)."""
    extra = sorted({k for r in rows for k, v in r.items() if k.startswith(PREFIXES) and k not in main
                    and isinstance(v, int | float)})
    stats = {k: describe([r[k] for r in rows if r.get(k) is not None]) for k in main}
    return stats | {k: describe([r[k] for r in rows if r.get(k) is not None]) for k in extra}


def aggregate(summaries: list[dict]) -> dict:
    """Aggregate the summary.json (or report.json) dicts of runs that differ only in seed.

    Returns {"name", "n", "seeds", "t_source", "primary", "stages": {stage: {key: describe}},
    "gain": {key: interval + "positive" (seeds with gain > 0) + "better" (seeds where the
    distilled student beat scratch)}}. The keys follow the runs' primary metric m (summary.json's
    "primary": acc for classifiers, ppl for language models): val_m, test_m (validation-selected),
    last_test_m, plus the other metrics the runs recorded; report.json inputs add their
    evaluation metrics (top5_acc, ece, nll, agreement, kl_teacher of the validation-selected weights).
    """
    if not summaries:
        raise DistillError("No runs to aggregate: give at least one run folder.")
    seeds = [s.get("seed") for s in summaries]
    dupes = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
    if dupes:
        raise DistillError(f"Seed(s) {dupes} appear more than once; aggregate runs with distinct seeds.")
    chosen = primary(summaries)
    m, lower = chosen["metric"], chosen["lower_is_better"]
    stages = {}
    for stage in STAGES:
        rows = [s["stages"][stage] for s in summaries if stage in s.get("stages", {})]
        if not rows:
            continue
        stages[stage] = _stage_stats(rows, tuple(p + m for p in PREFIXES))
        evals = [s["evaluation"]["stages"].get(stage, {}).get("best", {}) for s in summaries if s.get("evaluation")]
        for key in EVAL_KEYS:
            values = [e[key] for e in evals if e.get(key) is not None]
            if values:
                stages[stage][key] = describe(values)
    gain = {}
    paired = [s for s in summaries if {"scratch", "distill"} <= set(s.get("stages", {}))]
    for key in (f"test_{m}", f"last_test_{m}"):
        diffs = [s["stages"]["distill"][key] - s["stages"]["scratch"][key] for s in paired]
        if diffs:
            gain[key] = {**interval(diffs), "seeds": [s.get("seed") for s in paired],
                         "positive": sum(d > 0 for d in diffs), "better": sum((d < 0) if lower else (d > 0) for d in diffs)}
    names = sorted({str(s.get("name")) for s in summaries})
    return {
        "schema": 1,
        "name": names[0] if len(names) == 1 else names,
        "n": len(summaries),
        "seeds": seeds,
        "t_source": t_quantile(max(len(paired) - 1, 1))[1],
        "primary": chosen,
        "stages": stages,
        "gain": gain,
    }


def load_summary(run_dir: str | Path) -> dict:
    """report.json when `write_report` has run (it adds evaluation metrics), else summary.json."""
    run_dir = Path(run_dir)
    for name in ("report.json", "summary.json"):
        if (run_dir / name).is_file():
            return json.loads((run_dir / name).read_text())
    raise DistillError(f"'{run_dir}' has no summary.json: it is not a finished run folder.")


def seed_run_dirs(out_dir: str | Path) -> list[Path]:
    """The finished runs `distill run --seeds N` wrote: out_dir/seed-<k>/ holding summary.json,
    in seed order."""
    dirs = [d for d in Path(out_dir).glob("seed-*") if (d / "summary.json").is_file()]
    return sorted(dirs, key=lambda d: (int(d.name[5:]) if d.name[5:].lstrip("-").isdigit() else math.inf, d.name))


# ---------------------------------------------------------------- the --seeds folder's record

RECORD = "seeds-run.json"  # what `distill run --seeds N` runs, so `--resume OUT` can finish it


def write_record(out_dir: str | Path, cfg: RunConfig, n: int, finished: bool = False) -> None:
    """out_dir/seeds-run.json: the base config (seed = the first seed) and N, written atomically
    before seed-<first> starts; `finished` once every seed ran and the report is written."""
    write_json(Path(out_dir) / RECORD, {
        "schema": 1, "first_seed": cfg.seed, "n": n, "seeds": list(range(cfg.seed, cfg.seed + n)),
        "finished": finished, "config": cfg.model_dump(mode="json"),
    })


def read_record(out_dir: str | Path) -> tuple[RunConfig, int, bool] | None:
    """(base config, N, finished) from out_dir/seeds-run.json, or None when there is none."""
    path = Path(out_dir) / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        cfg, n = validate(migrate(record["config"])), int(record["n"])  # maybe an older schema
    except (ValueError, KeyError, TypeError) as e:
        raise DistillError(
            f"'{path}' is damaged ({e}); the seed-<k>/ runs beside it are intact. Resume each "
            "with `distill run --resume DIR/seed-<k>` and aggregate with `distill report DIR`."
        ) from None
    return cfg, n, bool(record.get("finished"))


def check_resume_trust(out: Path, trusted: bool) -> None:
    """`distill run --resume out` imports the code its configs name (a --seeds folder: the
    record's and every seed's). A folder can be someone else's: that needs --trust-code."""
    record = read_record(out)
    if record is not None:
        require_trust(record[0], out, trusted)
    for path in [out / "config.yaml", *sorted(out.glob("seed-*/config.yaml"))]:
        if path.is_file():
            require_trust(load_config(path), path.parent, trusted)


def check_new_folder(out_dir: str | Path, seeds: list[int]) -> None:
    """Refuse an --out that already holds a --seeds run (or any of these seeds' runs)."""
    out_dir = Path(out_dir)
    record = read_record(out_dir)
    if record is not None:
        if record[2]:
            raise DistillError(f"'{out_dir}' already holds a finished --seeds run. Choose another "
                               "--out, or delete it.")
        raise DistillError(f"'{out_dir}' holds an unfinished --seeds run. Continue it with "
                           f"`distill run --resume {out_dir}`, or choose another --out.")
    taken = [f"seed-{s}" for s in seeds if (out_dir / f"seed-{s}" / "config.yaml").exists()]
    if taken:
        raise DistillError(
            f"'{out_dir}' already holds {', '.join(taken)} (without {RECORD}, so not as one "
            f"--seeds run to resume). Choose another --out; an unfinished seed-<k> run continues "
            f"with `distill run --resume {out_dir}/seed-<k>`."
        )


def write_folder_report(path: str | Path, trust: Trust = NO_TRUST) -> Path:
    """`distill report PATH`: a run folder gets its task's report (`Task.write_report`); a
    --seeds folder (seed-<k>/ runs inside) gets each run's report, then `write_seed_report`.
    Returns the report.md written last (the seed report for a --seeds folder). `trust`: what
    the user allowed (--trust-code, --trust-checkpoint); every seed's config is checked before
    any report is written."""
    path = Path(path)
    if (path / "summary.json").is_file():
        return task_of_run(path).write_report(path, trust)
    runs = seed_run_dirs(path)
    if not runs:
        raise DistillError(
            f"'{path}' holds neither a finished run (summary.json) nor seed-<k>/ runs. "
            "Give a folder written by `distill run` or `distill run --seeds N`."
        )
    require(path, "seeds", "distill report")  # before any report: all or none are written
    for run in runs:  # every seed's config checked before any report is written
        require_trust(load_config(run / "config.yaml"), run, trust.code)
    for run in runs:
        task_of_run(run).write_report(run, trust)
    return write_seed_report(path, runs)


def write_seed_report(out_dir: str | Path, run_dirs: list[str | Path]) -> Path:
    """Aggregate the runs in `run_dirs` into out_dir/seeds.json, out_dir/accuracy.png (mean ±
    std bars, one dot per seed), out_dir/gain.png (per-seed gain of the primary metric with its
    95% interval) and out_dir/report.md (tables; links to each run's own report.md when present).
    Returns the path of report.md."""
    out_dir = Path(out_dir)
    require(out_dir, "seeds", "distill report")  # it overwrites report.md, seeds.json and PNGs
    summaries = [load_summary(d) for d in run_dirs]
    agg = aggregate(summaries)
    write_json(out_dir / "seeds.json", json_safe(agg))
    figures = []
    if any(st.get("test_acc", {}).get("mean") is not None for st in agg["stages"].values()):
        title = f"{agg['name']}: test accuracy over {agg['n']} seeds (mean ± std)"
        save_png(plot_accuracy_bars(agg["stages"], title), out_dir / "accuracy.png")
        figures.append("accuracy.png")
    if agg["gain"]:
        save_png(plot_gain(agg["gain"], agg["primary"]), out_dir / "gain.png")
        figures.append("gain.png")
    runs = [Path(d) for d in run_dirs]
    write_text(out_dir / "report.md", render_seed_markdown(agg, summaries, runs, out_dir, figures))
    return out_dir / "report.md"


def words(chosen: dict) -> dict:
    """How tables name the primary metric: its heading, short name, the unit of a gain, the
    number format, and the per-seed count of a better distilled student."""
    m = chosen["metric"]
    known = {"acc": ("Accuracy (%)", "acc", "points", ".2f"), "ppl": ("Perplexity", "ppl", "perplexity", ".3f")}
    heading, name, unit, spec = known.get(m, (m, m, m, ".4g"))
    count = "seeds with gain < 0 (better)" if chosen["lower_is_better"] else "seeds with gain > 0"
    return {"metric": m, "heading": heading, "name": name, "unit": unit, "spec": spec, "count": count}


def _pm(d: dict | None, spec: str = ".2f") -> str:
    if not d or d.get("mean") is None:
        return "–"
    return fmt(d["mean"], spec) + (f" ± {d['std']:{spec}}" if d.get("std") is not None else "")


def _gain_section(agg: dict, w: dict) -> list[str]:
    out = ["", f"## Gain of distillation (distilled − scratch, paired by seed, test {w['unit']})", ""]
    rows = []
    for key, g in agg["gain"].items():
        ci = f"[{g['ci95'][0]:+{w['spec']}}, {g['ci95'][1]:+{w['spec']}}]" if g["ci95"] else "– (one seed)"
        rows.append(["val-selected" if key == f"test_{w['metric']}" else "last epoch", f"{g['mean']:+{w['spec']}}",
                     fmt(g["std"], w["spec"]), ci, f"{g['better']} / {g['n']}"])
    out.append(table(["weights", "mean gain", "std", "95% t-interval", w["count"]], rows))
    return [*out, "", f"Interval: mean ± t(0.975, n−1) · sd / √n, t from {agg['t_source']}."]


def _other_metrics(stages: dict, w: dict) -> list[str]:
    """The other test metrics the runs recorded (an LM's NLL and next-token accuracy)."""
    keys = sorted({k for st in stages.values() for k in st if k.startswith("test_") and k != f"test_{w['metric']}"})
    if not keys:
        return []
    rows = [[LABELS[s], *(_pm(st.get(k), ".4f") for k in keys)] for s, st in stages.items()]
    return ["", "## Other test metrics (val-selected weights)", "", table(["model", *keys], rows)]


def render_seed_markdown(agg: dict, summaries: list[dict], runs: list[Path], out_dir: Path, figures: list[str]) -> str:
    stages, w = agg["stages"], words(agg["primary"])
    m, spec = w["metric"], w["spec"]
    out = [f"# {agg['name']}: {agg['n']} seeds ({', '.join(map(str, agg['seeds']))})", "",
           "Mean ± sample standard deviation over seeds; test data; model selection on validation data.", "",
           f"## {w['heading']}", ""]
    rows = [[LABELS[s], *(_pm(st[p + m], spec) for p in PREFIXES)] for s, st in stages.items()]
    name = w["name"]
    out.append(table(["model", f"val {name}", f"test {name} (val-selected)", f"test {name} (last epoch)"], rows))
    if agg["gain"]:
        out += _gain_section(agg, w)
    if m != "acc":
        out += _other_metrics(stages, w)
    extra = [(s, st) for s, st in stages.items() if any(k in st for k in EVAL_KEYS)]
    if extra:
        out += ["", "## Calibration and agreement (val-selected weights)", ""]
        rows = [[LABELS[s], _pm(st.get("ece")), _pm(st.get("nll"), ".4f"), _pm(st.get("agreement")),
                 _pm(st.get("kl_teacher"), ".4f")] for s, st in extra]
        out.append(table(["model", "ECE %", "NLL", "agreement with teacher %", "KL(teacher ‖ student)"], rows))
    for f in figures:
        out += ["", f"![{f.removesuffix('.png')}]({f})"]
    out += ["", "## Per seed", ""]
    rows = []
    for summary, run in zip(summaries, runs, strict=True):
        st = summary["stages"]
        link = _relative(run / "report.md", out_dir) if (run / "report.md").is_file() else _relative(run, out_dir)
        gain = (summary.get("gain") or {}).get(f"test_{m}")
        rows.append([str(summary.get("seed")), *(fmt(st.get(s, {}).get(f"test_{m}"), spec) for s in STAGES),
                     fmt(gain, "+" + spec), f"[{run.name}]({link})"])
    out.append(table(["seed", "teacher", "scratch", "distilled", "gain", "run"], rows))
    return "\n".join(out) + "\n"


def _relative(path: Path, start: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(start).resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()


def plot_gain(gain: dict, chosen: dict = DEFAULT_PRIMARY):
    """Per-seed paired gains (dots) with the mean and its 95% t-interval, for the
    validation-selected and last-epoch weights; zero marked."""
    w = words(chosen)
    fig, axes = figure_grid(1, 1, 5.2, 3.6)
    ax = axes[0, 0]
    names = {f"test_{w['metric']}": "val-selected", f"last_test_{w['metric']}": "last epoch"}
    for i, g in enumerate(gain.values()):
        ax.scatter([i] * g["n"], g["values"], color=COLORS["distill"], alpha=0.6, s=18, zorder=3,
                   label="one seed" if i == 0 else None)
        yerr = [[g["mean"] - g["ci95"][0]], [g["ci95"][1] - g["mean"]]] if g["ci95"] else None
        ax.errorbar(i + 0.18, g["mean"], yerr=yerr, fmt="D", color="black", capsize=5, markersize=5,
                    label="mean, 95% t-interval" if i == 0 else None)
    ax.axhline(0, color="gray", lw=1, ls="--")
    ax.set_xticks(range(len(gain)), [names[k] for k in gain])
    ax.set_xlim(-0.6, len(gain) - 0.4)
    better = "lower is better" if chosen["lower_is_better"] else "higher is better"
    ax.set(ylabel=f"distilled − scratch (test {w['unit']})", title=f"Gain of distillation, paired by seed ({better})")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig
