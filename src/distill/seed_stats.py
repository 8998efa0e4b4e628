"""Several seeds of one experiment, in numbers: mean ± sample std per stage, and the paired gains.

The scratch and distilled students of one seed share initial weights, data order and split, so
the gain distilled - scratch is computed per seed (paired) and summarised by its mean, sample
standard deviation and a 95% Student-t interval, mean ± t(0.975, n-1) * sd / sqrt(n). The
other students of a run (distill.stage_plan) are paired the same way with their own scratch
baseline (`baseline_of`): gen-<k> with scratch (both the teacher's architecture), peer-<i> with
scratch-peer-<i>; a teacher assistant has no scratch twin of its architecture, so no gain.
The t quantile comes from scipy.stats.t (scipy is installed with scikit-learn); without scipy,
from a table for df 1..30 and the normal 1.96 beyond (slightly narrow there: t(0.975, 31) = 2.04).
"""

from __future__ import annotations

import math
import statistics

from .errors import DistillError

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


def baseline_of(stage: str) -> str | None:
    """The scratch stage a student is paired with by seed (same architecture, initial weights
    and data order, trained on labels alone), or None for a teacher or a baseline itself."""
    if stage == "distill" or stage.startswith("gen-"):
        return "scratch"
    if stage.startswith("peer-"):
        return f"scratch-{stage}"
    return None


def stage_order(summaries: list[dict]) -> list[str]:
    """Every stage of the summaries: the first one's stages in its (run) order, then any other
    in the order the later ones name it."""
    return list(dict.fromkeys(stage for s in summaries for stage in s.get("stages", {})))


def paired_gain(summaries: list[dict], stage: str, base: str, m: str, lower: bool) -> dict:
    """{test_m, last_test_m: interval + "seeds", "positive" (seeds with gain > 0), "better"
    (seeds where `stage` beat `base`)} of the per-seed differences stage - base, over the
    summaries holding both; {} when none does."""
    paired = [s for s in summaries if {base, stage} <= set(s.get("stages", {}))]
    gain = {}
    for key in (f"test_{m}", f"last_test_{m}"):
        rows = [s for s in paired if s["stages"][stage].get(key) is not None and s["stages"][base].get(key) is not None]
        diffs = [s["stages"][stage][key] - s["stages"][base][key] for s in rows]
        if diffs:
            gain[key] = {**interval(diffs), "seeds": [s.get("seed") for s in rows],
                         "positive": sum(d > 0 for d in diffs), "better": sum((d < 0) if lower else (d > 0) for d in diffs)}
    return gain


def aggregate(summaries: list[dict]) -> dict:
    """Aggregate the summary.json (or report.json) dicts of runs that differ only in seed.

    Returns {"name", "n", "seeds", "t_source", "primary", "stages": {stage: {key: describe}}
    (every stage of the runs, in run order), "gain": {key: interval + "positive" (seeds with
    gain > 0) + "better" (seeds where the distilled student beat scratch)}, "gains": {stage:
    the same, of stage - baseline_of(stage)} for every student with its baseline (distill's is
    "gain")}. The keys follow the runs' primary metric m (summary.json's
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
    for stage in stage_order(summaries):
        rows = [s["stages"][stage] for s in summaries if stage in s.get("stages", {})]
        if not rows:
            continue
        stages[stage] = _stage_stats(rows, tuple(p + m for p in PREFIXES))
        evals = [s["evaluation"]["stages"].get(stage, {}).get("best", {}) for s in summaries if s.get("evaluation")]
        for key in EVAL_KEYS:
            values = [e[key] for e in evals if e.get(key) is not None]
            if values:
                stages[stage][key] = describe(values)
    gains = {stage: paired_gain(summaries, stage, base, m, lower)
             for stage in stages if (base := baseline_of(stage)) in stages}
    gains = {stage: g for stage, g in gains.items() if g}
    gain = gains.get("distill", {})
    paired = [s for s in summaries if {"scratch", "distill"} <= set(s.get("stages", {}))]
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
        "gains": gains,
    }
