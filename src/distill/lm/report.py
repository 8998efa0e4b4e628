"""A language-model run's report (`LanguageModelTask.write_report`): report.md with every
stage's perplexity, NLL and next-token accuracy from summary.json, the per-epoch validation
numbers from metrics.jsonl, and curves.png. Nothing is rebuilt or evaluated again (the run
measured all of it on the held-out token data), so a report imports no model code."""

from __future__ import annotations

from pathlib import Path

from ..io import write_text
from ..markdown import fmt, table
from ..plots import label, plot_training_curves, save_png
from ..run_folder import require
from ..run_reader import read_run


def write_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.md (and curves.png); return the path of report.md."""
    run_dir = Path(run_dir)
    _, summary, rows = read_run(run_dir)
    require(run_dir, "run", "distill report")  # it overwrites report.md and curves.png: distill's folders only
    figures = {}
    fig = plot_training_curves(rows)
    if fig is not None:
        save_png(fig, run_dir / "curves.png")
        figures["curves"] = "curves.png"
    path = run_dir / "report.md"
    write_text(path, render_markdown(summary, rows, figures))
    return path


def render_markdown(summary: dict, rows: list[dict], figures: dict[str, str]) -> str:
    """report.md from summary.json's content, metrics.jsonl's rows and the written figures."""
    d = summary["data"]
    out = [
        f"# {summary['name']} (seed {summary['seed']})",
        "",
        f"Data `{d['name']}`, tokenizer `{d.get('tokenizer', '?')}` ({d.get('vocab_size', '?')} tokens): "
        f"{d.get('train', '?')} training rows ({fmt(d.get('train_tokens'), ',')} target tokens), "
        f"{d.get('val', '?')} validation ({fmt(d.get('val_tokens'), ',')}), {d.get('test', '?')} test "
        f"({fmt(d.get('test_tokens'), ',')}). Device {summary.get('device', '?')}; finished "
        f"{summary.get('finished', '?')}. Next-token numbers over the counted target tokens; the "
        "best epoch is the one of lowest validation perplexity (validation data only).",
        "",
        "## Perplexity, NLL and next-token accuracy (test data)",
        "",
    ]
    body = [[label(stage), f"{r['params']:,}", str(r.get("best_epoch", "–")), fmt(r.get("val_ppl"), ".3f"),
             fmt(r.get("test_ppl"), ".3f"), fmt(r.get("last_test_ppl"), ".3f"), fmt(r.get("test_loss"), ".4f"),
             fmt(r.get("test_acc"))] for stage, r in summary["stages"].items()]
    out.append(table(["model", "params", "selected epoch", "val ppl", "test ppl (val-selected)",
                      "test ppl (last epoch)", "test NLL (nats)", "next-token acc %"], body))
    gain = summary.get("gain")
    if gain:
        out += ["", f"**Distilled − scratch:** {gain['test_ppl']:+.3f} test perplexity (val-selected), "
                    f"{gain['last_test_ppl']:+.3f} at the last epoch; lower is better."]
    out += ["", "## Validation by epoch (metrics.jsonl)", ""]
    body = [[label(r["stage"]), str(r["epoch"]), fmt(r.get("train_loss"), ".4f"),
             fmt(r.get("val_ppl"), ".3f"), fmt(r.get("val_loss"), ".4f"), fmt(r.get("val_acc"))] for r in rows]
    out.append(table(["model", "epoch", "train loss", "val ppl", "val NLL", "val next-token acc %"], body))
    if "curves" in figures:
        out += ["", f"![Training curves]({figures['curves']})"]
    return "\n".join(out) + "\n"
