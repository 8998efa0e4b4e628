"""The training loop, top to bottom: prepare, train an epoch, and after each optimizer step what
the plan says (distill.schedule: evaluate and select, end the epoch, checkpoint).

The engine is typed against `contracts.Distiller`, `Batch` and `StepOutput` and knows nothing
else: it calls `distiller(batch)`, back-propagates `out.loss` and logs each of `out.terms`
under its own name. It never asks which losses, models or task it runs.

Host syncs. On an accelerator, reading a tensor's value on the host (`bool(loss.isfinite())`,
the all-reduced stop flag) stalls the device's queue, so the loop does it every
`CHECK_EVERY` steps and before each evaluation, epoch end and checkpoint, not every step: a non-finite loss is
recorded on the device, with its step, and reported at the next check (the error still names
the epoch and the step where it first appeared; the weights of the steps after it are not
saved, since checkpoints are written only after a check). On the CPU a check costs nothing,
so it runs on every step, before the backward pass.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, DistributedSampler

import distill.sharding as sharding

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
)
from .schedule import Plan, build_optimizer, check_length, lr_factor
from .sharded_checkpoint import restore_weights, save_sharded

__all__ = ["FitResult", "NonFiniteLoss", "build_optimizer", "evaluate", "fit", "lr_factor"]

CHECK_EVERY = 32  # steps between host-side checks on an accelerator (see the module docstring)


@dataclass
class FitResult:
    best_state: dict  # the Distiller's state (student + loss modules) at the best evaluation
    best_epoch: int | float  # its epoch as its record says it (a fraction mid-epoch)
    best_val: dict
    history: list[dict] = field(default_factory=list)
    best_step: int = -1  # its global optimizer step


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
        # DDP/FSDP: synchronise gradients once, on the last micro-batch
        with sharding.gradient_sync(model, last=i == parts - 1):
            with autocast(device, sharding.autocast_precision(model, cfg.precision)):
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
    the plan (when training ends, evaluates, checkpoints), where training stands and the running
    sums since the last evaluation."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    params: list
    state: TrainState
    best_state: dict
    plan: Plan
    sums: RunningSums | None = None


def place(distiller: Distiller, train_loader, cfg, device) -> None:
    """Move to `device` and size projectors (before the optimizer exists, and before FSDP's
    working copy: the caller's Distiller must hold the same modules to take its weights back)."""
    distiller.to(device)
    if cfg.channels_last:  # NHWC conv weights (the teacher's too), before DDP sees the parameters
        distiller.to(memory_format=torch.channels_last)
    if distiller.needs_setup:
        distiller.setup(as_batch(next(iter(train_loader))).to(device))


def prepare(distiller: Distiller, train_loader, cfg, device, resume: dict | None) -> Training:
    """Wrap the placed Distiller for DDP or FSDP, build the optimizer and schedule, and load a
    checkpoint to resume from."""
    steps = check_length(train_loader, "train_loader")
    # the teacher is outside the module tree: never in DDP (FSDP shards it: distill.sharding)
    model = sharding.wrap(distiller, cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    optimizer = build_optimizer(distiller.parameters(), cfg)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s, steps))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    t = Training(model, optimizer, schedule, scaler, params, TrainState(), {}, Plan.of(cfg, steps))
    if resume is not None:
        t.best_state = restore_weights(resume, distiller, optimizer)  # sharded or not
        schedule.load_state_dict(resume["schedule"])
        t.state = resume["state"]
        set_rng_state(resume["rng"])
        used, now = resume.get("cache"), distiller.source_reference()
        if used and now is not None and now != used:
            # Exactness does not depend on it (misses are recomputed), only speed does.
            warnings.warn("the teacher cache differs from the one this checkpoint used; "
                          "its entries are recomputed as needed", stacklevel=3)
    t.sums = RunningSums(t.state.partial, t.state.step, optimizer.param_groups[0]["lr"], device)
    return t


class RunningSums:
    """The running sums since the last evaluation (on the device): each term's sum and the steps
    that reported it (a term may skip steps: an LM's CE on on-policy batches), correct and
    counted units, and the training seconds. They survive a checkpoint in TrainState.partial
    (`steps_done`: the steps a partial of an older version, without counts, holds)."""

    def __init__(self, partial: dict, steps_done: int, lr: float, device):
        self.sums = {k: torch.tensor(v, device=device) for k, v in partial.get("sums", {}).items()}
        self.reported = {k: partial.get("reported", {}).get(k, float(steps_done)) for k in self.sums}
        self.correct = torch.tensor(partial.get("correct", 0.0), device=device)
        self.counted = torch.tensor(partial.get("labelled", 0.0), device=device)
        self.lr, self.device = partial.get("lr", lr), device
        self.start = time.perf_counter() - partial.get("seconds", 0.0)

    def add(self, out: StepOutput) -> None:
        for name, value in {"loss": out.loss, **out.terms}.items():
            self.sums[name] = self.sums.get(name, 0) + value
            self.reported[name] = self.reported.get(name, 0.0) + 1.0
        self.correct += out.correct
        self.counted += out.counted

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def partial(self) -> dict:
        return {"sums": {k: float(v) for k, v in self.sums.items()}, "reported": dict(self.reported),
                "correct": float(self.correct), "labelled": float(self.counted), "lr": self.lr,
                "seconds": self.seconds()}

    def record(self, epoch: int | float, step: int) -> dict:
        """Each term's mean over the steps (and processes) that reported it; train accuracy."""
        record = {"epoch": epoch, "step": step, "lr": self.lr}
        for k, v in self.sums.items():
            pair = torch.stack([v.float(), torch.tensor(self.reported[k], device=self.device)])
            total, count = all_reduce_sum(pair).tolist()
            record[f"train_{k}"] = total / max(count, 1.0)
        correct, counted = all_reduce_sum(self.correct), all_reduce_sum(self.counted)
        record["train_acc"] = (100 * correct / counted.clamp(min=1)).item()
        return record


def train_epoch(distiller: Distiller, t: Training, train_loader, cfg, device, epoch: int,
                on_step, save, end_step=None) -> RunningSums:
    """Epoch `epoch`'s optimizer steps (from `t.state.step` when resuming mid-epoch) into
    `t.sums`, up to the epoch's end or the end of training (`t.plan.total`). `end_step(watch,
    out, batch, step)` (an `EndStep`) runs after each step, and once more when the loader ends
    short of len(loader) batches, to close the epoch."""
    state, plan = t.state, t.plan
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
        t.sums.add(out)
        state.step = step + 1
        if on_step is not None:
            on_step({"loss": out.loss})
        watch.check(out, epoch, step, batch)
        if end_step is not None:
            end_step(watch, out, batch, step)  # evaluation, the epoch's end, checkpoint
        if plan.at(state) >= plan.total:  # done: a stop requested now ends the run after this fit
            break
        if (step + 1) % watch.every == 0 and stop_requested():  # the stop flag: a sync under DDP
            watch.check(out, epoch, step, batch, force=True)
            save()
            raise Interrupted(save.checkpointer is not None)
    else:
        if out is not None:
            watch.check(out, epoch, step, batch, force=True)
        if end_step is not None and state.epoch == epoch:  # the loader ran short of its length
            state.step = plan.steps_per_epoch
            end_step(watch, None, None, state.step - 1)
    return t.sums


class EndStep:
    """What follows an optimizer step, as the plan says: an evaluation on validation (a record,
    and the weights kept if they are the best so far), the epoch's end, a checkpoint."""

    def __init__(self, distiller: Distiller, t: Training, val_loader, device, selection: Selection,
                 on_epoch, save):
        self.distiller, self.t, self.val_loader, self.device = distiller, t, val_loader, device
        self.selection, self.on_epoch, self.save = selection, on_epoch, save

    def __call__(self, watch: FiniteWatch | None, out: StepOutput | None, batch, step: int) -> None:
        state, plan = self.t.state, self.t.plan
        at = plan.at(state)
        epoch_end = state.step >= plan.steps_per_epoch
        evaluate, checkpoint = plan.evaluates(at), plan.checkpoints(at)
        if out is not None and (evaluate or checkpoint or epoch_end):  # nothing saved before a check
            watch.check(out, state.epoch, step, batch, force=True)
        if evaluate:
            self.evaluate(at)
        if epoch_end:
            state.epoch, state.step = state.epoch + 1, 0
        if checkpoint:
            self.save()

    def evaluate(self, at: int) -> dict:
        """Validate; keep the weights if they are the best so far; the record since the last one."""
        t, state, m = self.t, self.t.state, self.selection.metric
        seconds = t.sums.seconds()
        record = t.sums.record(t.plan.epoch_of(at), at)
        with sharding.unsharded_root(self.distiller):
            val = self.distiller.evaluate(self.val_loader, self.device)
        self.distiller.train()  # mid-epoch, training goes on
        if m not in val:
            raise DistillError(f"The selection metric {m!r} is not among the validation metrics "
                               f"({', '.join(val)}); pass fit(..., selection=Selection(<one of them>)).")
        record.update({f"val_{k}": v for k, v in val.items()})
        record["seconds"] = seconds
        if state.best_epoch < 0 or self.selection.better(val[m], state.best_val[m]):
            state.best_val, state.best_epoch, state.best_step = val, record["epoch"], at
            t.best_state = copy.deepcopy(self.distiller.state_dict())
        state.history.append(record)
        t.sums = RunningSums({}, 0, t.optimizer.param_groups[0]["lr"], self.device)
        if self.on_epoch is not None:
            self.on_epoch(record)
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
            t.state.partial = t.sums.partial()  # the sums since the last evaluation
            save = save_sharded if sharding.is_sharded(self.distiller) else Checkpointer.save
            save(self.checkpointer, self.distiller, t.optimizer, t.schedule, t.state, t.best_state)


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
    """Train `distiller`'s student (and loss modules) for `cfg.max_steps` optimizer steps, or else
    `cfg.epochs` epochs; validate every `cfg.eval_every` (and after the last step); select on
    validation (distill.schedule).

    Loaders yield `contracts.Batch`es, or (inputs, labels[, index]) tensor tuples. `on_step`
    gets {"loss": tensor} after each step (for progress bars); `on_epoch` gets each evaluation's
    record: epoch (a fraction mid-epoch), global step, every loss term's mean since the last
    evaluation, train accuracy on the counted units, lr, seconds, and the validation metrics.
    `selection` picks the best evaluation (default: the Distiller's, highest validation accuracy
    for classifiers and lowest perplexity for language models). With a `checkpointer`, a
    checkpoint is written every `cfg.checkpoint_every` epochs or steps, after the last step, and
    when a stop is requested (Ctrl-C, SIGTERM; see runtime.stop_requested); `resume` (from
    Checkpointer.load) continues exactly where it left.
    """
    device = torch.device(device)
    if not isinstance(distiller, Distiller):
        raise DistillError(f"fit trains a distill.Distiller (e.g. Distiller(teacher, student, terms)), "
                           f"not a {type(distiller).__name__}.")
    check_length(train_loader, "train_loader")
    check_length(val_loader, "val_loader")  # selection is on validation: it needs data
    selection = selection or distiller.selection
    place(distiller, train_loader, cfg, device)
    work = sharding.working_copy(distiller, cfg)  # under FSDP a copy is sharded (distill.sharding)
    t = prepare(work, train_loader, cfg, device, resume)
    sharding.release(distiller, work)  # the copy holds its shards now; the caller's weights return at the end
    save = _Saver(checkpointer, work, t)
    end_step = EndStep(work, t, val_loader, device, selection, on_epoch, save)
    if t.state.step >= t.plan.steps_per_epoch:  # an older checkpoint: an epoch's steps done, not its end
        end_step(None, None, None, t.state.step - 1)
    while t.plan.at(t.state) < t.plan.total:
        epoch = t.state.epoch
        work.train()
        work.set_epoch(epoch)
        set_loader_epoch(train_loader, epoch, t.state.step)
        train_epoch(work, t, train_loader, cfg, device, epoch, on_step, save, end_step)
    state = t.state
    best = sharding.finish(distiller, work, cfg, t.best_state)
    return FitResult(best, state.best_epoch, state.best_val, state.history, state.best_step)
