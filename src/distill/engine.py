"""The training loop, top to bottom: optimizer, schedule, step, evaluate, select.

The engine knows nothing about which losses exist: it calls `distiller(batch)`, back-propagates
`out["loss"]` and logs every other scalar in `out` under its own name.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .checkpoint import Checkpointer, TrainState, set_rng_state
from .distiller import UNLABELLED, Distiller
from .errors import DistillError
from .models.outputs import logits_of
from .runtime import (
    Interrupted,
    all_reduce_sum,
    autocast,
    distributed,
    stop_requested,
    world_size,
)


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


def check_batch(batch, name: str = "train_loader") -> None:
    """A loader's batch must be (inputs, labels) or (inputs, labels, index) tensors, as
    distill's datasets and a TensorDataset's DataLoader yield."""
    if isinstance(batch, tuple | list) and len(batch) >= 2 and all(isinstance(t, torch.Tensor) for t in batch):
        return
    if isinstance(batch, Mapping):
        got = f"a {type(batch).__name__} with keys {sorted(map(str, batch))[:6]}"
    elif isinstance(batch, tuple | list):
        got = f"a {type(batch).__name__} of {', '.join(type(t).__name__ for t in batch[:4]) or 'nothing'}"
    else:
        got = f"a {type(batch).__name__}"
    raise DistillError(
        f"{name} must yield (inputs, labels) or (inputs, labels, index) tensors; it yielded {got}. "
        "Return a tuple from the Dataset's __getitem__, or wrap the loader, e.g. "
        "[(b['x'], b['y']) for b in loader]."
    )


def check_length(loader, name: str) -> int:
    """len(loader), which must be at least one batch."""
    n = len(loader)
    if n == 0:
        raise DistillError(f"{name} is empty (no batches): give it at least one sample, or "
                           "drop_last=False when the dataset is smaller than one batch.")
    return n


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device) -> dict[str, float]:
    """Top-1 accuracy (%) and mean cross-entropy over the labelled samples of `loader`."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, count
    for batch in loader:
        check_batch(batch, "the evaluation loader")
        x, y = batch[0].to(device), batch[1].to(device)
        mask = y != UNLABELLED
        logits = logits_of(model(x))[mask].float()
        y = y[mask]
        totals[0] += F.cross_entropy(logits, y, reduction="sum")
        totals[1] += (logits.argmax(-1) == y).sum()
        totals[2] += len(y)
    model.train(was_training)
    loss, correct, count = all_reduce_sum(totals).tolist()  # under DDP each rank saw a shard
    return {"acc": 100.0 * correct / max(count, 1), "loss": loss / max(count, 1)}


@dataclass
class FitResult:
    best_state: dict  # the Distiller's state (student + loss modules) at the best validation epoch
    best_epoch: int
    best_val: dict
    history: list[dict] = field(default_factory=list)


class NonFiniteLoss(DistillError):
    """A loss term became NaN or Inf."""


def _check_finite(out: dict, epoch: int, step: int, distiller, batch) -> None:
    if torch.isfinite(out["loss"]):
        return
    bad = [name for name, v in out.items() if name not in COUNTERS and not torch.isfinite(v).all()]
    terms = [b for b in bad if b != "loss"] or ["loss"]
    raise NonFiniteLoss(
        f"The loss became non-finite at epoch {epoch + 1}, step {step + 1}: term(s) "
        f"{', '.join(repr(b) for b in terms)} = {out[terms[0]].item()}. "
        f"{_blame(out, distiller, batch, epoch == step == 0)} The last good checkpoint is kept."
    )


def _blame(out: dict, distiller, batch, first: bool) -> str:
    """Which of the inputs, the teacher, the student or a loss term made the loss non-finite
    (run only once it is, so it costs nothing on good steps)."""
    x = batch[0]
    if x.is_floating_point() and not torch.isfinite(x).all():
        return ("This batch's inputs contain NaN/Inf: check the data (missing values in a table, "
                "a division by zero in normalisation); lowering the learning rate will not help.")
    if isinstance(distiller, Distiller) and distiller.teacher is not None:
        with torch.no_grad():
            teacher = distiller.teacher_outputs(x).logits  # live, whatever a cache holds
        if not torch.isfinite(teacher).all():
            return ("The teacher's logits contain NaN/Inf for this batch: check the teacher "
                    "checkpoint (its weights, or a half-precision train.teacher_dtype that "
                    "overflows); lowering the learning rate will not help.")
    logits = out.get("logits")
    if logits is not None and not torch.isfinite(logits).all():
        if first:  # before any update: the student's forward itself
            return ("The student's logits are NaN/Inf before any update, on finite inputs: check "
                    "the student's forward (log of a non-positive value, 0/0, fp16 overflow) and "
                    "its initial weights.")
        return ("The student's logits became NaN/Inf: training diverged. Lower train.lr, or set "
                "train.grad_clip (e.g. 1.0).")
    return ("The inputs and both models' logits are finite, so the loss term itself overflowed: "
            "lower train.lr, set train.grad_clip (e.g. 1.0), or check the term's settings (T, "
            "layers).")


COUNTERS = ("logits", "correct", "counted")  # forward outputs that are not loss terms


def improved(val: dict, best: dict, key: str) -> bool:
    """Validation selection: higher accuracy, or lower loss (language models' perplexity)."""
    return val[key] < best[key] if key == "loss" else val[key] > best[key]


def accumulate_step(model, distiller, batch, cfg, scaler, device, epoch: int, step: int) -> dict:
    """Forward and backward over `cfg.accumulate` micro-batches of `batch`; gradients add up
    to those of the whole batch. Each micro-batch's loss is a mean over its own units (samples,
    or counted tokens: `distiller.count`), so it is weighted by its share of the whole batch's
    units, across processes too (DDP averages gradients over processes, hence the factor
    world_size). Returns the batch's loss terms (detached) and its correct/counted sums."""
    parts = max(1, min(cfg.accumulate, len(batch[0])))
    micros = [batch] if parts == 1 else list(zip(*(t.tensor_split(parts) for t in batch), strict=True))
    if parts == 1 and not distributed():
        shares = local_shares = [1.0]  # one batch, one process: nothing to re-weight
    else:
        counts = torch.stack([torch.as_tensor(distiller.count(m), dtype=torch.float32, device=device)
                              for m in micros])
        local = counts.sum().clamp(min=1)
        total = all_reduce_sum(counts.sum()).clamp(min=1) if distributed() else local
        shares, local_shares = counts / total * world_size(), counts / local
    totals: dict[str, torch.Tensor] = {}
    for i, micro in enumerate(micros):
        # DDP: synchronise gradients once, on the last micro-batch
        sync = model.no_sync() if distributed() and i < parts - 1 else contextlib.nullcontext()
        with sync:
            with autocast(device, cfg.precision):
                out = model(list(micro))
            _check_finite(out, epoch, step, distiller, micro)
            scaler.scale(out["loss"] * shares[i]).backward()
        for name, value in out.items():
            if name in ("correct", "counted"):
                totals[name] = totals.get(name, 0) + value.detach()
            elif name != "logits":  # this process's mean over the batch
                totals[name] = totals.get(name, 0) + value.detach().float() * local_shares[i]
    return totals


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
) -> FitResult:
    """Train `distiller`'s student (and loss modules) for `cfg.epochs`; select on validation.

    `on_step` gets {"loss": tensor} after each step (for progress bars); `on_epoch` gets the
    epoch's record: every loss term's mean, train accuracy on labelled samples, lr, seconds,
    and validation accuracy/loss. With a `checkpointer`, a checkpoint is written every
    `cfg.checkpoint_every` epochs and when a stop is requested (Ctrl-C, SIGTERM; see
    runtime.stop_requested); `resume` (from Checkpointer.load) continues exactly where it left.
    """
    device = torch.device(device)
    distiller.to(device)
    if cfg.channels_last:  # NHWC conv weights (the teacher's too), before DDP sees the parameters
        distiller.to(memory_format=torch.channels_last)
    steps = check_length(train_loader, "train_loader")
    if distiller.needs_setup:  # projectors must exist before the optimizer is built
        first = next(iter(train_loader))
        check_batch(first)
        distiller.setup(first[0].to(device))
    # DDP wraps the student and its trainable loss modules together; the teacher is outside
    # the module tree, so it is never wrapped, broadcast or synchronised.
    model = distiller
    if distributed():
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(distiller, device_ids=[device] if device.type == "cuda" else None)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    optimizer = build_optimizer(distiller.parameters(), cfg)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s, steps))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    prepare = getattr(distiller, "prepare_batch", None)
    state, best_state = TrainState(), {}
    if resume is not None:
        distiller.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        state, best_state = resume["state"], resume["best"]
        set_rng_state(resume["rng"])
        cache = getattr(distiller, "cache", None)
        if resume.get("cache") and cache is not None and cache.reference() != resume["cache"]:
            # Exactness does not depend on it (misses are recomputed), only speed does.
            warnings.warn("the teacher cache differs from the one this checkpoint used; "
                          "its entries are recomputed as needed", stacklevel=2)

    def save():
        if checkpointer is not None:
            checkpointer.save(distiller, optimizer, schedule, state, best_state)

    for epoch in range(state.epoch, cfg.epochs):
        start = time.perf_counter()
        distiller.train()
        distiller.set_epoch(epoch)
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        partial = state.partial
        sums = {k: torch.tensor(v, device=device) for k, v in partial.get("sums", {}).items()}
        # steps that reported each term: a term may skip steps (LM CE on on-policy batches)
        reported = {k: partial.get("reported", {}).get(k, float(state.step)) for k in sums}
        correct = torch.tensor(partial.get("correct", 0.0), device=device)
        labelled = torch.tensor(partial.get("labelled", 0.0), device=device)
        lr = partial.get("lr", optimizer.param_groups[0]["lr"])
        for step, batch in enumerate(train_loader):
            if step < state.step:  # resuming mid-epoch: these steps were done before the stop
                continue
            check_batch(batch)
            batch = [t.to(device, non_blocking=True) for t in batch]
            if cfg.channels_last and batch[0].dim() == 4:
                batch[0] = batch[0].contiguous(memory_format=torch.channels_last)
            if prepare is not None:  # e.g. on-policy batches generated by the student
                batch = prepare(batch, epoch, step)
            optimizer.zero_grad(set_to_none=True)
            out = accumulate_step(model, distiller, batch, cfg, scaler, device, epoch, step)
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            for name, value in out.items():
                if name not in COUNTERS:
                    sums[name] = sums.get(name, 0) + value
                    reported[name] = reported.get(name, 0.0) + 1.0
            correct += out["correct"]
            labelled += out["counted"]
            if on_step is not None:
                on_step({"loss": out["loss"]})
            if stop_requested():
                state.step = step + 1
                state.partial = {
                    "sums": {k: float(v) for k, v in sums.items()}, "reported": dict(reported),
                    "correct": float(correct),
                    "labelled": float(labelled), "lr": lr,
                }
                save()
                raise Interrupted(checkpointer is not None)
        record = {"epoch": epoch + 1, "lr": lr}
        for k, v in sums.items():  # each term's mean over the steps (and processes) that reported it
            total, count = all_reduce_sum(torch.stack([v.float(), torch.tensor(reported[k], device=device)])).tolist()
            record[f"train_{k}"] = total / max(count, 1.0)
        record["train_acc"] = (100 * all_reduce_sum(correct) / all_reduce_sum(labelled).clamp(min=1)).item()
        val = distiller.evaluate(val_loader, device)
        record.update({f"val_{k}": v for k, v in val.items() if k != "tokens"})
        record["seconds"] = time.perf_counter() - start
        state.epoch, state.step, state.partial = epoch + 1, 0, {}
        if state.best_epoch < 0 or improved(val, state.best_val, distiller.select):
            state.best_val, state.best_epoch = val, epoch + 1
            best_state = copy.deepcopy(distiller.state_dict())
        state.history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        every = cfg.checkpoint_every
        if every and (state.epoch % every == 0 or state.epoch == cfg.epochs):
            save()
    return FitResult(best_state, state.best_epoch, state.best_val, state.history)
