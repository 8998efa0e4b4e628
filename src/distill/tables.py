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
    table = narrow_table(f"{agg['name']}: {agg['n']} seeds, mean +- std")
    for col in ("stage", "val acc %", "test acc % (val-selected)", "test acc % (last epoch)"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for stage, r in agg["stages"].items():
        cells = [_mean_std(r.get(k)) for k in ("val_acc", "test_acc", "last_test_acc")]
        table.add_row(stage, *cells)
    gain = agg.get("gain") or {}
    if "test_acc" in gain:
        g = gain["test_acc"]
        table.caption = (
            f"distilled - scratch (paired): {g['mean']:+.2f} +- {g['std']:.2f} test points, "
            f"95% interval [{g['ci95'][0]:+.2f}, {g['ci95'][1]:+.2f}], positive in "
            f"{g['positive']}/{agg['n']} seeds"
        ) if g["ci95"] else f"distilled - scratch: {g['mean']:+.2f} test points"
    return table


def _mean_std(d: dict | None) -> str:
    if not d or d["mean"] is None:
        return "-"
    return f"{d['mean']:.2f}" + (f" +- {d['std']:.2f}" if d["std"] is not None else "")
