"""Console tables of a run's results: narrow enough for an 80-column terminal."""

from __future__ import annotations

from rich import box
from rich.table import Table

# short, so that a table's headers fit on one line of an 80-column terminal
METRIC_NAMES = {"acc": "acc %", "ppl": "ppl"}


def narrow_table(title: str) -> Table:
    """A rich Table without side borders or column rules (columns two spaces apart), so the
    summary and evaluation tables fit in 80 columns without wrapping a header."""
    return Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)


def summary_table(summary: dict) -> Table:
    primary = summary.get("primary", {"metric": "acc", "lower_is_better": False})
    m = primary["metric"]
    name = METRIC_NAMES.get(m, m)
    table = narrow_table(f"{summary['name']} (seed {summary['seed']}): did distillation help?")
    for col in ("stage", "params", "best epoch", f"val {name}", f"test {name}", f"last-epoch test {name}"):
        table.add_column(col, justify="right" if col != "stage" else "left")
    for stage, r in summary["stages"].items():
        table.add_row(
            stage, f"{r['params']:,}", str(r.get("best_epoch", "-")), f"{r[f'val_{m}']:.2f}",
            f"{r[f'test_{m}']:.2f}", f"{r[f'last_test_{m}']:.2f}" if f"last_test_{m}" in r else "-",
        )
    gain = summary.get("gain")
    if gain:
        better = "lower is better" if primary["lower_is_better"] else "higher is better"
        table.caption = (
            f"distilled - scratch: {gain[f'test_{m}']:+.2f} test {name} "
            f"(validation-selected), {gain[f'last_test_{m}']:+.2f} at the last epoch; {better}"
        )
    return table


def seeds_table(agg: dict) -> Table:
    """`seeds.aggregate`'s output: mean +- std of the runs' primary metric per stage, and the
    paired distilled - scratch gain."""
    primary = agg.get("primary", {"metric": "acc", "lower_is_better": False})
    m = primary["metric"]
    name = METRIC_NAMES.get(m, m)
    unit = "points" if m == "acc" else name
    table = narrow_table(f"{agg['name']}: {agg['n']} seeds, mean +- std")
    for col in ("stage", f"val {name}", f"test {name} (val-selected)", f"test {name} (last epoch)"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for stage, r in agg["stages"].items():
        table.add_row(stage, *(_mean_std(r.get(k)) for k in (f"val_{m}", f"test_{m}", f"last_test_{m}")))
    g = (agg.get("gain") or {}).get(f"test_{m}")
    if g:
        better = f"lower in {g['better']}/{agg['n']} seeds (better)" if primary["lower_is_better"] else \
            f"positive in {g['better']}/{agg['n']} seeds"
        table.caption = (
            f"distilled - scratch (paired): {g['mean']:+.2f} +- {g['std']:.2f} test {unit}, "
            f"95% interval [{g['ci95'][0]:+.2f}, {g['ci95'][1]:+.2f}], {better}"
        ) if g["ci95"] else f"distilled - scratch: {g['mean']:+.2f} test {unit}"
    return table


def _mean_std(d: dict | None) -> str:
    if not d or d["mean"] is None:
        return "-"
    return f"{d['mean']:.2f}" + (f" +- {d['std']:.2f}" if d["std"] is not None else "")
