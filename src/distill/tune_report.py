"""OUT/tune.md and tune.json: the default against the tuned config on test, every trial, and
optuna's parameter-importance and parallel-coordinate plots (PNGs beside them).

A plot optuna cannot make (too few complete trials, a one-parameter space for importances, a
missing plotting dependency) is replaced by a line saying why: the report never fails on it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from .io import write_json, write_text
from .markdown import fmt, table
from .plots import save_png
from .tune_space import shown_params
from .tune_state import SearchState

PLOTS = {"importance.png": "parameter importances (fANOVA)", "parallel.png": "parallel coordinates"}


def trial_rows(search: SearchState) -> list[dict]:
    """One dict per trial: number, state, value, params (with the tied CE weight), seconds."""
    rows = []
    resumed = {t.user_attrs["resumes"]: t.number for t in search.study.trials if "resumes" in t.user_attrs}
    for t in search.study.trials:
        state = t.state.name.lower()
        if state == "fail":
            state = "diverged" if "diverged" in t.user_attrs else f"killed (continued as trial {resumed.get(t.number, '?')})"
        rows.append({"number": t.number, "state": state, "value": t.value,
                     "params": shown_params(search.s.space, search.cfg, t.params),
                     "validations": len(t.intermediate_values), "seconds": t.user_attrs.get("seconds"),
                     "best_epoch": t.user_attrs.get("best_epoch")})
    return rows


def _plots(search: SearchState) -> dict[str, str]:
    """name -> "" when written, else why not."""
    notes = {}
    try:
        from optuna.visualization import matplotlib as vis
    except ImportError as e:
        return dict.fromkeys(PLOTS, f"optuna's matplotlib plots are unavailable ({e})")
    import matplotlib.pyplot as plt

    functions = {"importance.png": vis.plot_param_importances, "parallel.png": vis.plot_parallel_coordinate}
    for name, function in functions.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning on every call
                fig = function(search.study).figure
            fig.set_size_inches(8, 4.5)
            fig.tight_layout()
            save_png(fig, search.out / name)
            plt.close(fig)
            notes[name] = ""
        except Exception as e:  # noqa: BLE001 -- any failure of a plot is a note, not a failed search
            notes[name] = f"not drawn: {type(e).__name__}: {str(e)[:200]}"
    return notes


def _pm(d: dict | None, spec: str = ".2f", sign: bool = False) -> str:
    if not d or d.get("mean") is None:
        return "–"
    mean = f"{d['mean']:+{spec}}" if sign else f"{d['mean']:{spec}}"
    return mean + (f" ± {d['std']:{spec}}" if d.get("std") is not None else "")


def comparison_rows(result: dict) -> list[list[str]]:
    """default / tuned / tuned − default: distilled and scratch test, and the gain (mean ± std)."""
    key, rows = f"test_{result['metric']}", []
    for name in ("default", "tuned"):
        agg = result[name]
        st = agg["stages"]
        rows.append([name, str(agg["n"]), _pm(st.get("scratch", {}).get(key)), _pm(st.get("distill", {}).get(key)),
                     _pm(agg["gain"].get(key), sign=True)])
    paired = result["paired"]
    rows.append(["tuned − default (paired)", str(paired["distill"]["n"]), "", _pm(paired["distill"], sign=True),
                 _pm(paired.get("gain"), sign=True)])
    return rows


def _trials_table(rows: list[dict], keys: list[str]) -> str:
    body = [[str(r["number"]), r["state"], fmt(r["value"], ".4g"),
             *(fmt(r["params"].get(k), ".4g") for k in keys), str(r["validations"]), fmt(r["seconds"], ".1f")]
            for r in rows]
    return table(["trial", "state", "value (val)", *keys, "validations", "seconds"], body)


def render(search: SearchState, result: dict, rows: list[dict], notes: dict[str, str]) -> str:
    m, best = result["metric"], result["best"]
    keys = list(dict.fromkeys(k for r in rows for k in r["params"]))
    states = [r["state"].split(" ")[0] for r in rows]
    counts = ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states))
    lines = [
        f"# distill tune: {search.cfg.name}", "",
        f"{len(rows)} trials ({counts}); objective: the distilled student's val_{m} at its "
        f"validation-selected epoch ({'lower' if result['lower_is_better'] else 'higher'} is better); "
        "TPE sampler, median pruning. Test numbers below come from re-running the configs, never "
        "from the search.", "",
        f"Best: trial {best['trial']}, val_{m} {best['value']:.4g} — "
        + ", ".join(f"{k}={v:.4g}" for k, v in shown_params(search.s.space, search.cfg, best["params"]).items())
        + " ([best.yaml](best.yaml)).", "",
        f"## Default vs tuned on test ({m}, validation-selected epoch, mean ± std over seeds)", "",
        table(["config", "seeds", "scratch", "distilled", "gain (distilled − scratch)"], comparison_rows(result)),
        "", "Seed runs: [default/report.md](default/report.md), [best/report.md](best/report.md).",
        "", "## Trials", "", _trials_table(rows, keys), "",
    ]
    for name, title in PLOTS.items():
        lines += [f"![{title}]({name})" if not notes[name] else f"{title}: {notes[name]}", ""]
    return "\n".join(lines)


def write_report(search: SearchState, result: dict) -> Path:
    """tune.json (result + trials + plot notes) and tune.md; returns tune.md's path."""
    rows = trial_rows(search)
    notes = _plots(search)
    result.update(trials=rows, plots=notes)
    write_json(search.out / "tune.json", result)
    write_text(search.out / "tune.md", render(search, result, rows, notes))
    return search.out / "tune.md"
