"""Several seeds of one experiment (`distill run --seeds N`): the --seeds folder's record, and
its report (seeds.json, report.md, accuracy.png, gain.png) from the runs' summaries, which
distill.seed_stats aggregates (mean ± sample std per stage, the paired gains)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .config import RunConfig, load_config, validate
from .errors import DistillError
from .io import write_json, write_text
from .markdown import fmt, json_safe, table
from .plots import color, figure_grid, label, plot_accuracy_bars, save_png
from .run_folder import require
from .saved_config import migrate
from .seed_stats import (
    DEFAULT_PRIMARY,
    EVAL_KEYS,
    PREFIXES,
    T975,
    aggregate,
    baseline_of,
    describe,
    interval,
    paired_gain,
    primary,
    t_quantile,
)
from .tasks import task_of_run
from .trust import NO_TRUST, Trust, require_trust

__all__ = ["DEFAULT_PRIMARY", "EVAL_KEYS", "PREFIXES", "RECORD", "T975", "aggregate", "baseline_of",
           "check_new_folder", "check_resume_trust", "describe", "interval", "load_summary", "paired_gain",
           "plot_gain", "primary", "read_record", "render_seed_markdown", "seed_run_dirs", "t_quantile",
           "write_folder_report", "write_record", "write_seed_report"]

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
    if agg["gains"]:
        save_png(plot_gain(agg["gain"], agg["primary"], agg["gains"]), out_dir / "gain.png")
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


def _other_gains(agg: dict, w: dict) -> list[str]:
    """The paired gains of the students other than distill, each against its own baseline."""
    others = {s: g for s, g in agg.get("gains", {}).items() if s != "distill"}
    if not others:
        return []
    out = ["", f"## Gains of the other students (each − its scratch baseline, paired by seed, test {w['unit']})", ""]
    rows = []
    for stage, gain in others.items():
        for key, g in gain.items():
            ci = f"[{g['ci95'][0]:+{w['spec']}}, {g['ci95'][1]:+{w['spec']}}]" if g["ci95"] else "– (one seed)"
            rows.append([label(stage), label(baseline_of(stage) or "?"),
                         "val-selected" if key == f"test_{w['metric']}" else "last epoch",
                         f"{g['mean']:+{w['spec']}}", fmt(g["std"], w["spec"]), ci, f"{g['better']} / {g['n']}"])
    return [*out, table(["model", "baseline", "weights", "mean gain", "std", "95% t-interval", w["count"]], rows)]


def _other_metrics(stages: dict, w: dict) -> list[str]:
    """The other test metrics the runs recorded (an LM's NLL and next-token accuracy)."""
    keys = sorted({k for st in stages.values() for k in st if k.startswith("test_") and k != f"test_{w['metric']}"})
    if not keys:
        return []
    rows = [[label(s), *(_pm(st.get(k), ".4f") for k in keys)] for s, st in stages.items()]
    return ["", "## Other test metrics (val-selected weights)", "", table(["model", *keys], rows)]


def render_seed_markdown(agg: dict, summaries: list[dict], runs: list[Path], out_dir: Path, figures: list[str]) -> str:
    stages, w = agg["stages"], words(agg["primary"])
    m, spec = w["metric"], w["spec"]
    out = [f"# {agg['name']}: {agg['n']} seeds ({', '.join(map(str, agg['seeds']))})", "",
           "Mean ± sample standard deviation over seeds; test data; model selection on validation data.", "",
           f"## {w['heading']}", ""]
    rows = [[label(s), *(_pm(st.get(p + m), spec) for p in PREFIXES)] for s, st in stages.items()]
    name = w["name"]
    out.append(table(["model", f"val {name}", f"test {name} (val-selected)", f"test {name} (last epoch)"], rows))
    if agg["gain"]:
        out += _gain_section(agg, w)
    out += _other_gains(agg, w)
    if m != "acc":
        out += _other_metrics(stages, w)
    extra = [(s, st) for s, st in stages.items() if any(k in st for k in EVAL_KEYS)]
    if extra:
        out += ["", "## Calibration and agreement (val-selected weights)", ""]
        rows = [[label(s), _pm(st.get("ece")), _pm(st.get("nll"), ".4f"), _pm(st.get("agreement")),
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
        rows.append([str(summary.get("seed")), *(fmt(st.get(s, {}).get(f"test_{m}"), spec) for s in stages),
                     fmt(gain, "+" + spec), f"[{run.name}]({link})"])
    out.append(table(["seed", *(label(s) for s in stages), "gain", "run"], rows))
    return "\n".join(out) + "\n"


def _relative(path: Path, start: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(start).resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()


def plot_gain(gain: dict, chosen: dict = DEFAULT_PRIMARY, gains: dict | None = None):
    """Per-seed paired gains (dots) with the mean and its 95% t-interval, for the
    validation-selected and last-epoch weights; zero marked. `gain`: distilled − scratch
    (aggregate's "gain"); `gains` (aggregate's "gains"), when it holds other students too,
    draws every student's gain over its own baseline instead."""
    w = words(chosen)
    several = bool(gains) and set(gains) != {"distill"}
    points = [(st, k, g) for st, by_key in (gains if several else {"distill": gain}).items() for k, g in by_key.items()]
    fig, axes = figure_grid(1, 1, max(5.2, 1.1 * len(points)), 3.6)
    ax = axes[0, 0]
    names = {f"test_{w['metric']}": "val-selected", f"last_test_{w['metric']}": "last epoch"}
    stages = list(dict.fromkeys(st for st, _, _ in points))
    for i, (stage, _, g) in enumerate(points):
        ax.scatter([i] * g["n"], g["values"], color=color(stage, stages), alpha=0.6, s=18, zorder=3,
                   label="one seed" if i == 0 else None)
        yerr = [[g["mean"] - g["ci95"][0]], [g["ci95"][1] - g["mean"]]] if g["ci95"] else None
        ax.errorbar(i + 0.18, g["mean"], yerr=yerr, fmt="D", color="black", capsize=5, markersize=5,
                    label="mean, 95% t-interval" if i == 0 else None)
    ax.axhline(0, color="gray", lw=1, ls="--")
    ticks = [f"{label(st)}\n{names[k]}" if several else names[k] for st, k, _ in points]
    ax.set_xticks(range(len(points)), ticks, **({"fontsize": 7} if several else {}))
    ax.set_xlim(-0.6, len(points) - 0.4)
    better = "lower is better" if chosen["lower_is_better"] else "higher is better"
    what = "student − its scratch baseline" if several else "distilled − scratch"
    ax.set(ylabel=f"{what} (test {w['unit']})", title=f"Gain of distillation, paired by seed ({better})")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig
