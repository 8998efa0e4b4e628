"""Rich progress bars: one per stage, with the live loss and the last validation metric."""

from __future__ import annotations

from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .engine import CHECK_EVERY


class StageProgress:
    """Context manager; `step` and `epoch_done` are the engine's callbacks. Silent when quiet.

    `start` is the number of steps already done: a resumed stage continues at epoch k, step s,
    so its bar starts at k * steps_per_epoch + s and still ends full. With `max_steps` (which
    wins over `epochs`, as in training) the bar counts to it and each evaluation is shown by its
    step; otherwise by its epoch (a fraction for an evaluation mid-epoch)."""

    def __init__(self, stage: str, epochs: int, steps_per_epoch: int, quiet: bool = False, start: int = 0,
                 metric: str = "acc", max_steps: int | None = None):
        self.stage, self.epochs, self.metric, self.max_steps = stage, epochs, metric, max_steps
        self.bar = None if quiet else Progress(
            TextColumn("[bold]{task.description:<8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            transient=False,
        )
        self.total = max_steps if max_steps is not None else epochs * steps_per_epoch
        self.steps = start
        self.val = ""

    def __enter__(self):
        if self.bar is not None:
            self.bar.start()
            self.task = self.bar.add_task(self.stage, total=self.total, completed=self.steps, status="")
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()

    def step(self, out: dict) -> None:
        self.steps += 1
        # reading the loss is a host sync on an accelerator: as often as the engine's own checks
        if self.bar is not None and (self.steps % CHECK_EVERY == 0 or self.steps == self.total):
            status = f"loss {out['loss'].item():.4f}{self.val}"
            self.bar.update(self.task, completed=self.steps, status=status)

    def epoch_done(self, record: dict) -> None:
        value = record[f"val_{self.metric}"]
        shown = f"val {self.metric} {value:.1f}%" if self.metric == "acc" else f"val {self.metric} {value:.3f}"
        where = (f"step {record['step']}/{self.total}" if self.max_steps is not None
                 else f"epoch {record['epoch']}/{self.epochs}")
        self.val = f"  {shown} ({where})"
        if self.bar is not None:
            self.bar.update(self.task, completed=self.steps, status=f"loss {record['train_loss']:.4f}{self.val}")


@contextmanager
def progress_bar(description: str, total: int, quiet: bool = False):
    """A plain bar for one-off work (filling a teacher store); yields `advance(n)`."""
    if quiet or total == 0:
        yield lambda n: None
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn()) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
