"""The training loop, top to bottom: prepare, train an epoch, end the epoch (evaluate, select,
checkpoint).

The engine is typed against `contracts.Distiller`, `Batch` and `StepOutput` and knows nothing
else: it calls `distiller(batch)`, back-propagates `out.loss` and logs each of `out.terms`
under its own name. It never asks which losses, models or task it runs.

Host syncs. On an accelerator, reading a tensor's value on the host (`bool(loss.isfinite())`,
the all-reduced stop flag) stalls the device's queue, so the loop does it every
`CHECK_EVERY` steps and at the end of each epoch, not every step: a non-finite loss is
recorded on the device, with its step, and reported at the next check (the error still names
the epoch and the step where it first appeared; the weights of the steps after it are not
saved, since checkpoints are written only after a check). On the CPU a check costs nothing,
so it runs on every step, before the backward pass.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, DistributedSampler

from .checkpoint import Checkpointer, TrainState, set_rng_state
from .contracts import Batch, Distiller, Selection, StepOutput, as_batch
from .data.loader import BatchLoader
from .errors import DistillError
from .metrics import evaluate_classifier as evaluate
from .runtime import (
    Interrupted,
    all_reduce_sum,
    autocast,
    distributed,
    stop_requested,
    world_size,
    wrap_ddp,
)

__all__ = ["FitResult", "NonFiniteLoss", "build_optimizer", "evaluate", "fit", "lr_factor"]

CHECK_EVERY = 32  # steps between host-side checks on an accelerator (see the module docstring)


def build_optimizer(params, cfg) -> torch.optim.Optimizer:
    """adam | adamw | sgd (with momentum, nesterov, weight decay) from a TrainConfig."""
    params = [p for p in params if p.requires_grad]
    # batch_size is the global batch, so the lr needs no change under DDP; scale_lr is opt-in.
    lr = cfg.lr * (world_size() if cfg.scale_lr else 1)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        params, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )


def lr_factor(cfg, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based).

    Linear warm-up over `warmup_epochs`, then constant, cosine to zero over the remaining
    steps, or x`gamma` at each epoch in `milestones`.
    """
    warmup = cfg.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "cosine":
        total = cfg.epochs * steps_per_epoch - warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total, 1)))
    if cfg.schedule == "multistep":
        epoch = step // steps_per_epoch
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    return 1.0


def check_length(loader, name: str) -> int:
    """len(loader), which must be at least one batch."""
    try:
        n = len(loader)
    except TypeError:
        raise DistillError(f"{name} must be a loader with a length (a torch DataLoader or "
                           f"distill's TensorLoader), not a {type(loader).__name__}.") from None
    if n == 0:
        raise DistillError(f"{name} is empty (no batches): give it at least one sample, or "
                           "drop_last=False when the dataset is smaller than one batch.")
    return n


@dataclass
class FitResult:
    best_state: dict  # the Distiller's state (student + loss modules) at the best validation epoch
    best_epoch: int
    best_val: dict
    history: list[dict] = field(default_factory=list)


class NonFiniteLoss(DistillError):
    """A loss term became NaN or Inf."""


class FiniteWatch:
    """Stops training at the first non-finite loss, syncing with the host only every `every`
    steps (1 on the CPU: then before the backward pass of the bad step). The stop flag is read
    on the same steps."""

    def __init__(self, distiller: Distiller, device: torch.device, every: int | None = None):
        self.distiller = distiller
        self.every = every or (1 if device.type == "cpu" else CHECK_EVERY)
        self.first_bad = torch.tensor(-1, device=device)  # the first bad step of this epoch

    def observe(self, out: StepOutput, epoch: int, step: int, batch: Batch) -> None:
        if self.every == 1:
            if not torch.isfinite(out.loss):
                raise self._error(out, epoch, step, batch, step)
            return
        bad = ~torch.isfinite(out.loss.detach()) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, step, self.first_bad)  # a Python scalar: no copy to the device

    def check(self, out: StepOutput, epoch: int, step: int, batch: Batch, force: bool = False) -> None:
        """At every `every`-th step (or `force`: an epoch's end, a stop): raise if a loss was bad."""
        if self.every > 1 and (force or (step + 1) % self.every == 0):
            first = int(self.first_bad)
            if first >= 0:
                raise self._error(out, epoch, step, batch, first)

    def _error(self, out: StepOutput, epoch: int, step: int, batch: Batch, first: int) -> NonFiniteLoss:
        values = {"loss": out.loss, **out.terms}
        bad = [name for name, v in values.items() if not torch.isfinite(v).all()]
        terms = [b for b in bad if b != "loss"] or ["loss"]
        if first == step:
            seen, why = "", self.distiller.explain_nonfinite(batch, out, epoch == first == 0)
        else:  # the bad batch is gone: say what to look at, not a diagnosis of another batch
            seen = f" (found at the check after step {step + 1}: on an accelerator the loss is read every {self.every} steps)"
            why = ("Check the data for NaN/Inf (missing values, a division by zero in normalisation) "
                   "and the teacher checkpoint; if both are finite, training diverged: lower train.lr "
                   "or set train.grad_clip (e.g. 1.0). On the CPU every step is checked and the "
                   "cause is diagnosed on the bad batch.")
        return NonFiniteLoss(
            f"The loss became non-finite at epoch {epoch + 1}, step {first + 1}{seen}: term(s) "
            f"{', '.join(repr(b) for b in terms)} = {values[terms[0]].item()}. {why} The last "
            "good checkpoint is kept."
        )


def accumulate_step(model, distiller: Distiller, batch: Batch, cfg, scaler, device, watch: FiniteWatch,
                    epoch: int, step: int) -> StepOutput:
    """Forward and backward over `cfg.accumulate` micro-batches of `batch`; gradients add up
    to those of the whole batch. Each micro-batch's loss is a mean over its own units (samples,
    or counted tokens: `distiller.count`), so it is weighted by its share of the whole batch's
    units, across processes too (DDP averages gradients over processes, hence the factor
    world_size). Returns the batch's loss and terms (detached; this process's means over the
    batch) and its correct/counted sums."""
    parts = max(1, min(cfg.accumulate, len(batch)))
    micros = [batch] if parts == 1 else batch.split(parts)
    if parts == 1 and not distributed():
        shares = local_shares = [1.0]  # one batch, one process: nothing to re-weight
    else:
        counts = torch.stack([distiller.count(m).to(device, torch.float32) for m in micros])
        local = counts.sum().clamp(min=1)
        total = all_reduce_sum(counts.sum()).clamp(min=1) if distributed() else local
        shares, local_shares = counts / total * world_size(), counts / local
    loss, terms, counted, correct = 0.0, {}, 0.0, 0.0
    for i, micro in enumerate(micros):
        # DDP: synchronise gradients once, on the last micro-batch
        sync = model.no_sync() if distributed() and i < parts - 1 else contextlib.nullcontext()
        with sync:
            with autocast(device, cfg.precision):
                out = model(micro)
            watch.observe(out, epoch, step, micro)
            scaler.scale(out.loss * shares[i]).backward()
        if parts == 1:  # the batch's own means (a loop over one micro-batch adds nothing)
            return StepOutput(out.loss.detach().float(), {k: v.detach().float() for k, v in out.terms.items()},
                              out.counted.detach(), out.correct.detach(), out.logits)
        loss = loss + out.loss.detach().float() * local_shares[i]
        for name, value in out.terms.items():
            terms[name] = terms.get(name, 0.0) + value.detach().float() * local_shares[i]
        counted, correct = counted + out.counted.detach(), correct + out.correct.detach()
    return StepOutput(loss, terms, counted, correct, out.logits)


@dataclass
class Training:
    """What `prepare` builds for a fit: the (DDP-wrapped) model, optimizer, schedule, scaler,
    and where training stands."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    params: list
    state: TrainState
    best_state: dict


def prepare(distiller: Distiller, train_loader, cfg, device, resume: dict | None) -> Training:
    """Move to `device`, size projectors (before the optimizer exists), wrap for DDP, build the
    optimizer and schedule, and load a checkpoint to resume from."""
    distiller.to(device)
    if cfg.channels_last:  # NHWC conv weights (the teacher's too), before DDP sees the parameters
        distiller.to(memory_format=torch.channels_last)
    steps = check_length(train_loader, "train_loader")
    if distiller.needs_setup:  # projectors must exist before the optimizer is built
        distiller.setup(as_batch(next(iter(train_loader))).to(device))
    # the teacher is outside the module tree: never wrapped, broadcast or synchronised
    model = wrap_ddp(distiller, device)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    optimizer = build_optimizer(distiller.parameters(), cfg)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s, steps))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    training = Training(model, optimizer, schedule, scaler, params, TrainState(), {})
    if resume is not None:
        distiller.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        training.state, training.best_state = resume["state"], resume["best"]
        set_rng_state(resume["rng"])
        used, now = resume.get("cache"), distiller.source_reference()
        if used and now is not None and now != used:
            # Exactness does not depend on it (misses are recomputed), only speed does.
            warnings.warn("the teacher cache differs from the one this checkpoint used; "
                          "its entries are recomputed as needed", stacklevel=3)
    return training


class EpochSums:
    """An epoch's running sums (on the device): each term's sum and the steps that reported it
    (a term may skip steps: an LM's CE on on-policy batches), correct and counted units. They
    survive an interrupt in TrainState.partial."""

    def __init__(self, partial: dict, steps_done: int, lr: float, device):
        self.sums = {k: torch.tensor(v, device=device) for k, v in partial.get("sums", {}).items()}
        self.reported = {k: partial.get("reported", {}).get(k, float(steps_done)) for k in self.sums}
        self.correct = torch.tensor(partial.get("correct", 0.0), device=device)
        self.counted = torch.tensor(partial.get("labelled", 0.0), device=device)
        self.lr, self.device = partial.get("lr", lr), device

    def add(self, out: StepOutput) -> None:
        for name, value in {"loss": out.loss, **out.terms}.items():
            self.sums[name] = self.sums.get(name, 0) + value
            self.reported[name] = self.reported.get(name, 0.0) + 1.0
        self.correct += out.correct
        self.counted += out.counted

    def partial(self) -> dict:
        return {"sums": {k: float(v) for k, v in self.sums.items()}, "reported": dict(self.reported),
                "correct": float(self.correct), "labelled": float(self.counted), "lr": self.lr}

    def record(self, epoch: int) -> dict:
        """Each term's mean over the steps (and processes) that reported it; train accuracy."""
        record = {"epoch": epoch + 1, "lr": self.lr}
        for k, v in self.sums.items():
            pair = torch.stack([v.float(), torch.tensor(self.reported[k], device=self.device)])
            total, count = all_reduce_sum(pair).tolist()
            record[f"train_{k}"] = total / max(count, 1.0)
        correct, counted = all_reduce_sum(self.correct), all_reduce_sum(self.counted)
        record["train_acc"] = (100 * correct / counted.clamp(min=1)).item()
        return record


def train_epoch(distiller: Distiller, t: Training, train_loader, cfg, device, epoch: int,
                on_step, save) -> EpochSums:
    """One epoch of optimizer steps (from `t.state.step` when resuming mid-epoch)."""
    state = t.state
    sums = EpochSums(state.partial, state.step, t.optimizer.param_groups[0]["lr"], device)
    watch = FiniteWatch(distiller, device)
    out = batch = None
    first = state.step if isinstance(train_loader, BatchLoader) else 0  # distill's loaders skip unread
    for step, item in enumerate(train_loader, first):
        if step < state.step:  # resuming mid-epoch: these steps were done before the stop
            continue
        batch = as_batch(item).to(device)
        if cfg.channels_last and batch.inputs.dim() == 4:
            batch.inputs = batch.inputs.contiguous(memory_format=torch.channels_last)
        batch = distiller.prepare(batch, epoch, step)  # e.g. on-policy samples of the student
        t.optimizer.zero_grad(set_to_none=True)
        out = accumulate_step(t.model, distiller, batch, cfg, t.scaler, device, watch, epoch, step)
        if cfg.grad_clip:
            t.scaler.unscale_(t.optimizer)
            torch.nn.utils.clip_grad_norm_(t.params, cfg.grad_clip)
        t.scaler.step(t.optimizer)
        t.scaler.update()
        t.schedule.step()
        sums.add(out)
        if on_step is not None:
            on_step({"loss": out.loss})
        watch.check(out, epoch, step, batch)
        if (step + 1) % watch.every == 0 and stop_requested():  # the stop flag: a sync under DDP
            watch.check(out, epoch, step, batch, force=True)
            state.step, state.partial = step + 1, sums.partial()
            save()
            raise Interrupted(save.checkpointer is not None)
    if out is not None:
        watch.check(out, epoch, step, batch, force=True)
    return sums


def end_epoch(distiller: Distiller, t: Training, sums: EpochSums, val_loader, device, epoch: int,
              selection: Selection, seconds: float) -> dict:
    """Evaluate on validation, keep the weights if this epoch is the best so far; the record."""
    state = t.state
    record = sums.record(epoch)
    val = distiller.evaluate(val_loader, device)
    m = selection.metric
    if m not in val:
        raise DistillError(f"The selection metric {m!r} is not among the validation metrics "
                           f"({', '.join(val)}); pass fit(..., selection=Selection(<one of them>)).")
    record.update({f"val_{k}": v for k, v in val.items()})
    record["seconds"] = seconds
    state.epoch, state.step, state.partial = epoch + 1, 0, {}
    if state.best_epoch < 0 or selection.better(val[m], state.best_val[m]):
        state.best_val, state.best_epoch = val, epoch + 1
        t.best_state = copy.deepcopy(distiller.state_dict())
    state.history.append(record)
    return record


def set_loader_epoch(loader, epoch: int, step: int = 0) -> None:
    """The epoch's shuffle order: distill's loaders (so a resumed run starts at this epoch's
    order, at batch `step`, without reading the batches before it) and a DataLoader's
    DistributedSampler (which reshuffles only when told the epoch)."""
    if isinstance(loader, BatchLoader):
        loader.set_epoch(epoch, step)
    elif isinstance(loader, DataLoader) and isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)


class _Saver:
    def __init__(self, checkpointer: Checkpointer | None, distiller, training: Training):
        self.checkpointer, self.distiller, self.t = checkpointer, distiller, training

    def __call__(self) -> None:
        if self.checkpointer is not None:
            t = self.t
            self.checkpointer.save(self.distiller, t.optimizer, t.schedule, t.state, t.best_state)


def fit(
    distiller: Distiller,
    train_loader,
    val_loader,
    cfg,
    device,
    on_step: Callable[[dict], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    checkpointer: Checkpointer | None = None,
    resume: dict | None = None,
    selection: Selection | None = None,
) -> FitResult:
    """Train `distiller`'s student (and loss modules) for `cfg.epochs`; select on validation.

    Loaders yield `contracts.Batch`es, or (inputs, labels[, index]) tensor tuples. `on_step`
    gets {"loss": tensor} after each step (for progress bars); `on_epoch` gets the epoch's
    record: every loss term's mean, train accuracy on the counted units, lr, seconds, and the
    validation metrics. `selection` picks the best epoch (default: the Distiller's, highest
    validation accuracy for classifiers and lowest perplexity for language models). With a `checkpointer`, a checkpoint is written every `cfg.checkpoint_every`
    epochs and when a stop is requested (Ctrl-C, SIGTERM; see runtime.stop_requested);
    `resume` (from Checkpointer.load) continues exactly where it left.
    """
    device = torch.device(device)
    if not isinstance(distiller, Distiller):
        raise DistillError(f"fit trains a distill.Distiller (e.g. Distiller(teacher, student, terms)), "
                           f"not a {type(distiller).__name__}.")
    check_length(train_loader, "train_loader")
    check_length(val_loader, "val_loader")  # selection is on validation: it needs data
    selection = selection or distiller.selection
    t = prepare(distiller, train_loader, cfg, device, resume)
    save = _Saver(checkpointer, distiller, t)
    for epoch in range(t.state.epoch, cfg.epochs):
        start = time.perf_counter()
        distiller.train()
        distiller.set_epoch(epoch)
        set_loader_epoch(train_loader, epoch, t.state.step)
        sums = train_epoch(distiller, t, train_loader, cfg, device, epoch, on_step, save)
        record = end_epoch(distiller, t, sums, val_loader, device, epoch, selection,
                           time.perf_counter() - start)
        if on_epoch is not None:
            on_epoch(record)
        every = cfg.checkpoint_every
        if every and (t.state.epoch % every == 0 or t.state.epoch == cfg.epochs):
            save()
    return FitResult(t.best_state, t.state.best_epoch, t.state.best_val, t.state.history)
