"""Rich progress bars: one per stage, with the live loss and the last validation accuracy."""

from __future__ import annotations

from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class StageProgress:
    """Context manager; `step` and `epoch_done` are the engine's callbacks. Silent when quiet.

    `start` is the number of steps already done: a resumed stage continues at epoch k, step s,
    so its bar starts at k * steps_per_epoch + s and still ends full."""

    def __init__(self, stage: str, epochs: int, steps_per_epoch: int, quiet: bool = False, start: int = 0):
        self.stage, self.epochs = stage, epochs
        self.bar = None if quiet else Progress(
            TextColumn("[bold]{task.description:<8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            transient=False,
        )
        self.total = epochs * steps_per_epoch
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
        if self.bar is not None and (self.steps % 10 == 0 or self.steps == self.total):
            status = f"loss {out['loss'].item():.4f}{self.val}"
            self.bar.update(self.task, completed=self.steps, status=status)

    def epoch_done(self, record: dict) -> None:
        shown = f"val ppl {record['val_ppl']:.3f}" if "val_ppl" in record else f"val acc {record['val_acc']:.1f}%"
        self.val = f"  {shown} (epoch {record['epoch']}/{self.epochs})"
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
