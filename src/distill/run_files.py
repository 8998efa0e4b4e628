"""A run folder's files, written by rank 0: config.yaml, metrics.jsonl (and TensorBoard),
the weights of each stage, stages.json (the finished stages' results), summary.json, and the
lock that lets one process at a time run the folder.

What `--resume` reads back lives here too: stages.json's results, the interrupted stage's
checkpoint (checkpoint.py), and metrics.jsonl pruned back to that checkpoint. Which folders
distill may write at all is run_folder.py's (the ownership marker); this class only uses it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .checkpoint import Checkpointer
from .config import RunConfig, to_yaml
from .errors import DistillError
from .io import append_line, save_weights, write_json, write_text
from .resume import lock_run, prune_metrics, read_stages
from .run_folder import claim, legacy, sweep
from .runtime import all_gather_objects, barrier, is_main


def tensorboard_class():
    """TensorBoard is optional: metrics.jsonl always holds the same numbers."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise DistillError(
            "log.tensorboard=true needs the tensorboard package: pip install 'distill[tensorboard]' "
            "(or set log.tensorboard=false; metrics.jsonl holds the same numbers)."
        ) from None
    return SummaryWriter


class RunFolder:
    """One run folder. `results` maps each stage begun to its record (params, then metrics
    once it finishes); stages.json holds the finished ones, so a resume skips them."""

    def __init__(self, path: Path, resume: bool = False):
        self.dir, self.resume = Path(path), resume
        self.main = is_main()  # only rank 0 writes files
        self.metrics = self.dir / "metrics.jsonl"
        self.results: dict[str, dict] = {}
        self.lock: int | None = None  # the folder's lock (rank 0), held for the whole run
        self.tensorboard = None  # a SummaryWriter when log.tensorboard is on

    def open(self, cfg: RunConfig) -> None:
        """Rank 0 checks and creates the folder (every process learns the outcome); a resume
        reads the finished stages back; then the folder is locked for this run."""
        error = None
        if self.main:
            try:
                self._check_and_create(cfg)
            except DistillError as e:
                error = str(e)
        errors = [e for e in all_gather_objects(error) if e]
        if errors:
            raise DistillError(errors[0])
        if self.resume and (self.dir / "stages.json").exists():
            self.results = read_stages(self.dir)
        self.lock = lock_run(self.dir)

    def _check_and_create(self, cfg: RunConfig) -> None:
        if self.resume and not (self.dir / "config.yaml").exists():
            raise DistillError(f"'{self.dir}' holds no run to resume (no config.yaml there).")
        # distill's marker first: a folder of the user's (files, no marker) is refused before
        # anything in it is read as a run or written; an older run folder is adopted on resume
        claim(self.dir, "run", "--resume" if self.resume else "--out",
              adopt=self.resume and legacy(self.dir, "run"))
        if (self.dir / "summary.json").exists():
            raise DistillError(
                f"'{self.dir}' already holds a finished run" + (
                    ": there is nothing to resume. Read it with distill eval / distill report, or start "
                    "a new run with another --out." if self.resume else ". Choose another --out, or delete it.")
            )
        if (self.dir / "config.yaml").exists() and not self.resume:
            raise DistillError(
                f"'{self.dir}' holds an unfinished run. Continue it with `distill run --resume "
                f"{self.dir}`, or choose another --out."
            )
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if not self.resume:
                write_text(self.dir / "config.yaml", to_yaml(cfg))
        except OSError as e:
            raise DistillError(
                f"Cannot write the run folder '{self.dir}': {e.strerror or e}. Choose a writable "
                "--out with free space."
            ) from None

    def start_tensorboard(self, writer_class) -> None:
        """The writer creates its log folder, so it starts only once the folder is checked."""
        self.tensorboard = writer_class(log_dir=str(self.dir / "tensorboard"))

    def begin_stage(self, stage: str, data_id: tuple[str, str] | None) -> tuple[Checkpointer, dict | None]:
        """The stage's checkpointer and, on a resume, the checkpoint it continues from.

        `results` already holds `stage`, unfinished. Before its first record, what a killed
        attempt of it wrote after its checkpoint goes, so no evaluation is written twice."""
        checkpointer = Checkpointer(self.dir, stage, data_id)
        resume = checkpointer.load() if self.resume else None
        if self.main:
            kept = len(resume["state"].history) if resume else 0
            prune_metrics(self.metrics, stage, set(self.results) - {stage}, kept)
        return checkpointer, resume

    def log_epoch(self, stage: str, record: dict, by_steps: bool = False) -> None:
        """One metrics.jsonl line per evaluation (stage, epoch and global step); the same numbers
        to TensorBoard, against the epoch, or the step when the stage's schedule is in steps
        (`by_steps`: max_steps, or evaluations every N steps)."""
        if not self.main:
            return
        append_line(self.metrics, json.dumps({"stage": stage, **record}))
        if self.tensorboard is not None:
            x = record["step"] if by_steps else record["epoch"]
            for key, value in record.items():
                if key not in ("epoch", "step"):
                    self.tensorboard.add_scalar(f"{stage}/{key}", value, x)
            self.tensorboard.flush()

    def save(self, distiller, stem: str) -> None:
        """The student alone in <stem>.safetensors; trainable loss parts (projectors) beside it."""
        if not self.main:
            return
        save_weights(distiller.student, self.dir / f"{stem}.safetensors")
        if any(True for _ in distiller.terms.parameters()):
            save_weights(distiller.terms, self.dir / f"{stem}-losses.safetensors")

    def save_model(self, model, stem: str) -> None:
        """One model in <stem>.safetensors (a cohort's peer, several teachers' ensemble)."""
        if self.main:
            save_weights(model, self.dir / f"{stem}.safetensors")

    def finish_stage(self) -> None:
        """Record the finished stages in stages.json; the stage's checkpoint is then not needed."""
        if self.main:
            write_json(self.dir / "stages.json", self.results)  # the stage is done...
            Checkpointer.clear(self.dir)  # ...so its checkpoint is no longer needed
        barrier()

    def write_summary(self, summary: dict) -> None:
        if self.main:
            write_json(self.dir / "summary.json", summary)

    def sweep(self) -> None:
        """Orphaned .tmp and ckpt-* files of killed writes: only distill's own names."""
        if self.main:
            sweep(self.dir)

    def unlock(self) -> None:
        """The run is over (finished, stopped or failed): close the TensorBoard writer and free
        the folder's lock."""
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None
