"""A fit's schedule, counted in optimizer steps: how long training lasts, the optimizer and its
learning rate at each step, and which steps end with an evaluation or a checkpoint.

Training lasts `train.max_steps` optimizer steps when that is set (stopping mid-epoch if it
falls there), else `train.epochs` epochs of len(train_loader) steps. `train.eval_every` and
`train.checkpoint_every` are an `Every`: a count of epochs (an int, or "2 epochs") or of steps
("500 steps"). Steps are counted from the stage's start across epochs (the global step), so
"500 steps" means after steps 500, 1000, ... whatever the epoch's length; "2 epochs" means at
the ends of epochs 2, 4, ... The last step of training is always evaluated (the last weights
get a record) and checkpointed unless checkpoint_every is 0.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import torch

from .errors import DistillError
from .runtime import world_size

__all__ = ["Every", "Plan", "build_optimizer", "check_length", "counts_steps", "dump_every", "lr_factor", "parse_every",
           "planned_epochs", "total_steps"]

_EVERY = re.compile(r"\s*(\d+)\s*_?\s*(step|epoch)s?\s*", re.IGNORECASE)
EVERY_HELP = ("a number of epochs (an integer, e.g. 2, or '2 epochs') or of optimizer steps "
              "(e.g. '500 steps')")


@dataclass(frozen=True)
class Every:
    """Every `count` epochs or steps; a count of 0: never."""

    count: int
    unit: Literal["epoch", "step"] = "epoch"

    def __str__(self) -> str:
        return f"{self.count} {self.unit}{'' if self.count == 1 else 's'}"

    def due(self, step: int, steps_per_epoch: int) -> bool:
        """Whether global step `step` (steps completed) is one of the every-`count`-th steps
        or ends one of the every-`count`-th epochs."""
        if self.count == 0:
            return False
        if self.unit == "step":
            return step % self.count == 0
        return step % steps_per_epoch == 0 and (step // steps_per_epoch) % self.count == 0


def parse_every(value: Any) -> Every:
    """An int (epochs, as checkpoint_every always meant) or '500 steps' / '2 epochs' /
    '500steps' -> Every; a ValueError naming both forms otherwise."""
    if isinstance(value, Every):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        count, unit = value, "epoch"
    elif isinstance(value, str) and (match := _EVERY.fullmatch(value)):
        count, unit = int(match[1]), match[2].lower()
    else:
        raise ValueError(f"write {EVERY_HELP}, not {value!r}")
    if count < 0:
        raise ValueError(f"the count must be 0 or more; write {EVERY_HELP}")
    return Every(count, unit)


def dump_every(every: Every) -> int | str:
    """How an Every is saved (config.yaml): epochs as a plain int, as before; steps as 'N steps'."""
    return every.count if every.unit == "epoch" else str(every)


def check_length(loader, name: str) -> int:
    """len(loader), which must be at least one batch: the steps of an epoch."""
    try:
        n = len(loader)
    except TypeError:
        raise DistillError(f"{name} must be a loader with a length (a torch DataLoader or "
                           f"distill's TensorLoader), not a {type(loader).__name__}.") from None
    if n == 0:
        raise DistillError(f"{name} is empty (no batches): give it at least one sample, or "
                           "drop_last=False when the dataset is smaller than one batch.")
    return n


def total_steps(cfg, steps_per_epoch: int) -> int:
    """The optimizer steps of the whole fit: max_steps when set (it wins), else epochs' worth."""
    return cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch


def planned_epochs(cfg, steps_per_epoch: int) -> int:
    """The epochs a fit begins (the last one maybe only in part): what a teacher cache plans for."""
    return math.ceil(total_steps(cfg, steps_per_epoch) / steps_per_epoch)


def counts_steps(cfg) -> bool:
    """Whether a stage's schedule is in steps (max_steps, or evaluations every N steps): then the
    progress bar and TensorBoard count steps rather than epochs."""
    return cfg.max_steps is not None or cfg.eval_every.unit == "step"


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

    Linear warm-up over `warmup_steps` (or `warmup_epochs`), then constant, cosine to zero at
    the last step of training (total_steps), or x`gamma` at each epoch in `milestones`.
    """
    warmup = cfg.warmup_steps or cfg.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "cosine":
        total = total_steps(cfg, steps_per_epoch) - warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total, 1)))
    if cfg.schedule == "multistep":
        epoch = step // steps_per_epoch
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    return 1.0


@dataclass(frozen=True)
class Plan:
    """When, in global steps, a fit ends, evaluates and checkpoints."""

    steps_per_epoch: int
    total: int
    eval_every: Every
    checkpoint_every: Every

    @classmethod
    def of(cls, cfg, steps_per_epoch: int) -> Plan:
        return cls(steps_per_epoch, total_steps(cfg, steps_per_epoch), cfg.eval_every, cfg.checkpoint_every)

    def at(self, state) -> int:
        """The global step of a TrainState (epochs completed, steps into the next)."""
        return state.epoch * self.steps_per_epoch + state.step

    def evaluates(self, step: int) -> bool:
        return step >= self.total or self.eval_every.due(step, self.steps_per_epoch)

    def checkpoints(self, step: int) -> bool:
        every = self.checkpoint_every
        return every.count > 0 and (step >= self.total or every.due(step, self.steps_per_epoch))

    def epoch_of(self, step: int) -> int | float:
        """Epochs completed at global step `step`, as a record says it: an int at an epoch's
        end (as every record said before steps), else a fraction (4 decimals)."""
        whole, rest = divmod(step, self.steps_per_epoch)
        return whole if rest == 0 else round(step / self.steps_per_epoch, 4)
