"""Per-epoch wall time of knowledge distillation: the PyTorch tutorial's loop vs distill.

Four ways to train the same student from the same initial weights on the same data:

  (a) classic: the PyTorch KD tutorial's `train_knowledge_distillation`, written out verbatim
      below, over a DataLoader(TensorDataset, shuffle=True); the teacher runs under no_grad on
      every step;
  (b) online: `distill.fit` with Distiller(teacher, student, {"kd": (KD(T), 0.75)}, ce_weight=0.25)
      over distill's TensorLoader, teacher-output cache off;
  (c) cached: the same with the teacher-output cache on (memory). Its first epoch runs the
      teacher and fills the cache; later epochs read it (steady state);
  (d) plain: Distiller(None, student) through `fit`: the student alone on the labels, the floor
      that (c) can approach.

Four settings: digits-sized MLPs (sklearn digits, 1,797 x 64; mlp [1200, 1200] -> mlp [32]), a
CNN teacher over an MLP student on MNIST-sized random data (10,000 x 1 x 28 x 28; cnn [32, 64]
-> mlp [64]) and resnet32x4 -> resnet8x4 on CIFAR-shaped random data (256 x 3 x 32 x 32, 100
classes), all with Adam, lr 1e-3, T = 2, soft-target weight 0.75, CE weight 0.25, batch 64, as in
the tutorial; and resnet56 -> resnet20 on CIFAR-shaped random data (1,280 x 3 x 32 x 32, 20
steps per epoch, 100 classes) with the CIFAR recipe's SGD (lr 0.05, momentum 0.9, weight decay
5e-4) and T = 4, same weights and batch. The plain loop builds the same optimizer as distill's
build_optimizer (its one change to the tutorial's code). The random resnet56 teacher's
BatchNorm statistics are calibrated on 4 batches first (see calibrate_bn: with raw init its
logits have a std near 1,650 and the tutorial's loss turns NaN).

Timing. One thread (torch.set_num_threads(1)). The variants of a setting run interleaved, one
epoch each in turn (a, b, c, d, a, b, ...): each variant runs in its own forked process (by
default; --runner thread: a Python thread of this process, as it did before) and a baton lets
exactly one of them run at a time, so the loops stay exactly as written (fit and the
tutorial's function are called once each, for all epochs) while machine-load drifts hit every
variant alike. A process per variant means each trains in a main thread and on a heap of its
own, as a user's script does: in threads the variants share the process's allocator state,
and allocator effects are part of what this measures (distill once lost 5-9% to page faults
from the order of its teacher and student forwards; see the README). What is timed is the training pass of an epoch: from the start of
iterating the training loader to its exhaustion (every step: batch, teacher, student, loss,
backward, optimizer). fit's per-epoch validation (on 64 samples here) and the tutorial's print
are outside it; fit's own whole-epoch seconds are kept in the JSON too. The steady state of every
variant is the median of epochs 2..E; the first epoch is reported separately (for (c) it is the
cache-filling epoch). The CPU time of each variant's thread in the same passes (time.thread_time;
with one torch thread all of a step's work runs there) and of its process (time.process_time) is
reported beside the wall time: on a machine shared with other jobs it does not count the time
spent waiting for a core. Ratios are given of the steady states and, "paired", as the median
over epochs 2..E of the ratio within each round.

Also reported: teacher/student FLOPs (distill.models.count_flops), the final epoch's mean train
loss and the train-set accuracy after training of every variant ((a) and (b) see different
shuffles: equal within seed noise; (b) and (c) must train the identical student: checked
bit for bit), and the targets (b)/(a) <= 1.03 in CPU time, (b)/(a) <= 1.05, (c)/(d) <= 1.10
and, where the teacher costs >= 10x the student's FLOPs, (a)/(c) >= 5 (wall time).

With --levers it measures instead, on the CNN settings, speed levers against their baseline in
the same interleaved way: the teacher forward under torch.inference_mode instead of no_grad
(and, for every registered loss term, whether an inference-mode teacher output can be used in
the loss, or needs a clone), channels_last memory format (teacher and student) and
torch.compile of the student (compile time reported separately; inductor gets an empty cache
directory unless --warm-compile-cache, so it is a first run's compile time).

    python benchmarks/speed.py             # the four variants, four settings (~12 min)
    python benchmarks/speed.py --levers    # the levers (~10 min)
    python benchmarks/speed.py --settings digits --epochs 4   # a quick look

Results go to benchmarks/results/speed.json ("main" and "levers" sections; a run replaces only
its own section).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.optim as optim
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import distill
from distill import KD, LOSSES, Distiller, Outputs, evaluate, fit
from distill.cache import open_cache
from distill.config import TrainConfig
from distill.contracts import Batch
from distill.data.digits import load_digits_arrays
from distill.data.loader import TensorLoader
from distill.models import count_flops, create_model

THREADS = 1
SEED = 0
LR, T, SOFT_WEIGHT, CE_WEIGHT = 1e-3, 2.0, 0.75, 0.25
DEVICE = torch.device("cpu")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "speed.json"


# ---------------------------------------------------------------- (a): the tutorial, verbatim


def classic_train_knowledge_distillation(teacher, student, train_loader, epochs, learning_rate, T, soft_target_loss_weight, ce_loss_weight, device, make_optimizer=None):
    history = []  # (added for the benchmark)
    ce_loss = nn.CrossEntropyLoss()
    optimizer = optim.Adam(student.parameters(), lr=learning_rate)
    if make_optimizer is not None:  # (added for the benchmark: a setting's own optimizer, e.g. SGD)
        optimizer = make_optimizer(student.parameters())

    teacher.eval()  # Teacher set to evaluation mode
    student.train() # Student to train mode

    for epoch in range(epochs):
        running_loss = 0.0
        for inputs, labels in train_loader:
            inputs, labels = inputs.to(device), labels.to(device)

            optimizer.zero_grad()

            # Forward pass with the teacher model - do not save gradients here as we do not change the teacher's weights
            with torch.no_grad():
                teacher_logits = teacher(inputs)

            # Forward pass with the student model
            student_logits = student(inputs)

            #Soften the student logits by applying softmax first and log() second
            soft_targets = nn.functional.softmax(teacher_logits / T, dim=-1)
            soft_prob = nn.functional.log_softmax(student_logits / T, dim=-1)

            # Calculate the soft targets loss. Scaled by T**2 as suggested by the authors of the paper "Distilling the knowledge in a neural network"
            soft_targets_loss = torch.sum(soft_targets * (soft_targets.log() - soft_prob)) / soft_prob.size()[0] * (T**2)

            # Calculate the true label loss
            label_loss = ce_loss(student_logits, labels)

            # Weighted sum of the two losses
            loss = soft_target_loss_weight * soft_targets_loss + ce_loss_weight * label_loss

            loss.backward()
            optimizer.step()

            running_loss += loss.item()

        print(f"Epoch {epoch+1}/{epochs}, Loss: {running_loss / len(train_loader)}")
        history.append(running_loss / len(train_loader))  # (added for the benchmark)
    return history


# ---------------------------------------------------------------- interleaving


class Baton:
    """One variant's thread runs at a time, in a fixed rotation over the unfinished ones."""

    def __init__(self, names: list[str]):
        self.names, self.done, self.turn = list(names), set(), None
        self.cv = threading.Condition()

    def _next(self, name: str) -> str | None:
        i = self.names.index(name)
        for k in range(1, len(self.names) + 1):
            candidate = self.names[(i + k) % len(self.names)]
            if candidate not in self.done:
                return candidate
        return None

    def start(self) -> None:
        with self.cv:
            self.turn = self.names[0]
            self.cv.notify_all()

    def wait(self, name: str) -> None:
        with self.cv:
            self.cv.wait_for(lambda: self.turn == name)

    def pass_on(self, name: str) -> None:
        with self.cv:
            self.turn = self._next(name)
            self.cv.notify_all()

    def finish(self, name: str) -> None:
        with self.cv:
            self.done.add(name)
            self.turn = self._next(name)
            self.cv.notify_all()


class TimedLoader:
    """A training loader that, at the start of every epoch but the first, hands the CPU to the
    next variant and waits for its turn, then times its own pass (first batch requested to the
    loader exhausted: the whole training pass of the loop consuming it). Other attributes
    (set_epoch, x, index, ...) are the wrapped loader's."""

    def __init__(self, loader, name: str, baton: Baton):
        self.loader, self.name, self.baton = loader, name, baton
        self.seconds: list[float] = []  # training pass of each epoch
        self.waits: list[float] = []  # time spent waiting for the other variants, per epoch
        self.cpu: list[float] = []  # CPU time of this thread in the training pass
        self.process: list[float] = []  # CPU time of the whole process in the training pass

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, attr):
        if attr == "loader":
            raise AttributeError(attr)
        return getattr(self.loader, attr)

    def __iter__(self):
        start = time.perf_counter()
        if self.seconds:
            self.baton.pass_on(self.name)
            self.baton.wait(self.name)
        self.waits.append(time.perf_counter() - start)
        start, cpu, process = time.perf_counter(), time.thread_time(), time.process_time()
        yield from self.loader
        self.seconds.append(time.perf_counter() - start)
        self.cpu.append(time.thread_time() - cpu)
        self.process.append(time.process_time() - process)


class PipeBaton:
    """The child-process side of the baton: hand the CPU back to the parent, wait for 'go'."""

    def __init__(self, conn):
        self.conn = conn

    def pass_on(self, name: str) -> None:
        self.conn.send_bytes(pickle.dumps(("yield", None)))

    def wait(self, name: str) -> None:
        self.conn.recv()


@dataclass
class Variant:
    name: str
    run: object  # run(timed_loader_factory) -> dict of results; called in the variant's thread
    model: nn.Module | None = None  # what it trains: copied back from a variant's process
    result: dict = field(default_factory=dict)
    error: str | None = None
    threads: int | None = None
    loader: TimedLoader | SimpleNamespace | None = None


def _child(v: Variant, conn) -> None:
    """A variant's process (forked): wait for 'go', run, send back timings, results, weights."""
    conn.recv()
    torch.set_num_threads(THREADS)
    v.threads = torch.get_num_threads()

    def timed(loader):
        v.loader = TimedLoader(loader, v.name, PipeBaton(conn))
        return v.loader

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the tutorial prints every epoch
            v.result = v.run(timed) or {}
    except Exception as e:  # recorded and reported; the other variants go on
        v.error = f"{type(e).__name__}: {e}"
    loader = v.loader
    timings = {k: getattr(loader, k) for k in ("seconds", "waits", "cpu", "process")} if loader else None
    state = v.model.state_dict() if v.model is not None and v.error is None else None
    # plain pickle, which copies tensors: multiprocessing's pickler would hand them over in
    # shared memory that is gone once this process exits
    conn.send_bytes(pickle.dumps(("done", {"result": v.result, "error": v.error,
                                           "threads": v.threads, "timings": timings,
                                           "state": state})))
    conn.close()


def run_interleaved_processes(variants: list[Variant]) -> None:
    """Run every variant in its own forked process, one at a time, one epoch each in turn.

    Each variant then trains in the main thread of its own process and on its own heap, as a
    user's script or `distill run` does. In threads of one process the variants share glibc's
    allocator state (the main arena, per-thread arenas), and the allocator is part of what is
    measured: two KD loops interleaved step by step in one process saw ~22k minor page faults
    per teacher forward with the teacher after the student, where one loop alone in `fit` sees
    3-8k (main thread or helper thread) and none with the teacher first.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    procs, conns = {}, {}
    for v in variants:
        parent, child = ctx.Pipe()
        procs[v.name] = ctx.Process(target=_child, args=(v, child), name=f"speed-{v.name}")
        procs[v.name].start()
        child.close()
        conns[v.name] = parent
    by_name = {v.name: v for v in variants}
    running = [v.name for v in variants]
    while running:
        for name in list(running):
            v = by_name[name]
            try:
                conns[name].send("go")
                kind, payload = pickle.loads(conns[name].recv_bytes())
            except (EOFError, OSError) as e:  # the process died (e.g. killed for memory)
                kind, payload = "done", {"error": f"variant process died: {e!r}"}
            if kind == "yield":
                continue
            running.remove(name)
            v.error, v.result = payload.get("error"), payload.get("result") or {}
            v.threads = payload.get("threads")
            if payload.get("timings"):
                v.loader = SimpleNamespace(**payload["timings"])  # the timings TimedLoader kept
            if payload.get("state") is not None:
                v.model.load_state_dict(payload["state"])
    for name, p in procs.items():
        p.join()
        conns[name].close()


def run_interleaved(variants: list[Variant]) -> None:
    """Run every variant in its own thread, one at a time, one epoch each in turn."""
    baton = Baton([v.name for v in variants])

    def body(v: Variant) -> None:
        baton.wait(v.name)
        torch.set_num_threads(THREADS)
        v.threads = torch.get_num_threads()

        def timed(loader):
            v.loader = TimedLoader(loader, v.name, baton)
            return v.loader

        try:
            v.result = v.run(timed) or {}
        except Exception as e:  # recorded and reported; the other variants go on
            v.error = f"{type(e).__name__}: {e}"
        finally:
            baton.finish(v.name)

    threads = [threading.Thread(target=body, args=(v,), name=v.name) for v in variants]
    for t in threads:
        t.start()
    with contextlib.redirect_stdout(io.StringIO()):  # the tutorial prints every epoch
        baton.start()
        for t in threads:
            t.join()


# ---------------------------------------------------------------- settings


@dataclass
class Setting:
    key: str
    label: str
    data: str  # "digits" or "random"
    samples: int
    in_shape: tuple
    classes: int
    teacher: tuple[str, dict]
    student: tuple[str, dict]
    epochs: int
    lever_epochs: int
    batch_size: int = 64
    optimizer: str = "adam"  # "adam" (the tutorial's) or "sgd" (momentum 0.9, weight decay)
    lr: float = LR
    T: float = T
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0  # sgd only
    calibrate_teacher_bn: bool = False  # see calibrate_bn

    def hyperparameters(self) -> dict:
        out = {"optimizer": self.optimizer, "lr": self.lr, "T": self.T,
               "soft_target_weight": SOFT_WEIGHT, "ce_weight": CE_WEIGHT, "seed": SEED}
        if self.optimizer == "sgd":
            out.update(momentum=self.momentum, weight_decay=self.weight_decay)
        return out

    def make_optimizer(self, params) -> optim.Optimizer:
        """The plain loop's optimizer: the one distill's build_optimizer makes from train_config."""
        if self.optimizer == "adam":
            return optim.Adam(params, lr=self.lr)
        return optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def train_config(self, epochs: int) -> TrainConfig:
        return TrainConfig(epochs=epochs, optimizer=self.optimizer, lr=self.lr, schedule="constant",
                           checkpoint_every=0, momentum=self.momentum,
                           weight_decay=self.weight_decay if self.optimizer == "sgd" else 0.0)


SETTINGS = {
    "digits": Setting("digits", "digits MLP [1200,1200] -> MLP [32]", "digits", 1797, (1, 8, 8),
                      10, ("mlp", {"hidden": [1200, 1200]}), ("mlp", {"hidden": [32]}), 20, 5),
    "mnist": Setting("mnist", "MNIST-sized CNN [32,64] -> MLP [64]", "random", 10_000, (1, 28, 28),
                     10, ("cnn", {"channels": [32, 64]}), ("mlp", {"hidden": [64]}), 5, 5),
    "cifar": Setting("cifar", "CIFAR-shaped resnet32x4 -> resnet8x4", "random", 256, (3, 32, 32),
                     100, ("resnet32x4", {}), ("resnet8x4", {}), 5, 4),
    # 20 steps per epoch so that the setting takes ~6 minutes; SGD and T = 4, the CIFAR recipe
    "resnet56": Setting("resnet56", "CIFAR-shaped resnet56 -> resnet20 (SGD, T=4)", "random",
                        1280, (3, 32, 32), 100, ("resnet56", {}), ("resnet20", {}), 5, 4,
                        optimizer="sgd", lr=0.05, T=4.0, weight_decay=5e-4,
                        calibrate_teacher_bn=True),
}


def make_data(s: Setting) -> tuple[torch.Tensor, torch.Tensor]:
    if s.data == "digits":
        x, y = load_digits_arrays()
        return torch.from_numpy(x) / 16.0, torch.from_numpy(y)
    g = torch.Generator().manual_seed(SEED)
    x = torch.randint(0, 256, (s.samples, *s.in_shape), dtype=torch.uint8, generator=g)
    return x.float() / 255.0, torch.randint(0, s.classes, (s.samples,), generator=g)


def make_models(s: Setting, x: torch.Tensor) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(SEED)
    teacher = create_model(s.teacher[0], s.classes, s.in_shape, **s.teacher[1]).eval()
    if s.calibrate_teacher_bn:
        calibrate_bn(teacher, x[:4 * s.batch_size], s.batch_size)
    torch.manual_seed(SEED + 1)
    student = create_model(s.student[0], s.classes, s.in_shape, **s.student[1])
    return teacher, student


def calibrate_bn(model: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """Set BatchNorm running statistics to the mean/variance over a few batches of `x`.

    A randomly initialised deep ResNet in eval mode (running stats 0/1) multiplies its
    activations through every residual block: resnet56's logits on this data have a std near
    1,650, so softmax(teacher / T) has exact zeros and the tutorial's `p * (log p - ...)` turns
    NaN. With calibrated statistics the logits are O(1), as a trained teacher's are.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for xb in x.split(batch_size):
            model(xb)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


def is_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def warm_up(teacher: nn.Module, student: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """One untimed teacher forward and student step, so one-time kernel set-up lands nowhere."""
    xb = x[:batch_size]
    with torch.no_grad():
        teacher(xb)
    s = copy.deepcopy(student).train()
    s(xb).sum().backward()


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def epoch_stats(v: Variant) -> dict:
    seconds = v.loader.seconds if v.loader else []
    cpu = v.loader.cpu if v.loader else []
    process = v.loader.process if v.loader else []
    out = {"epoch_seconds": seconds, "first": seconds[0] if seconds else None,
           "steady": median(seconds[1:]), "cpu_seconds": cpu, "cpu_first": cpu[0] if cpu else None,
           "cpu_steady": median(cpu[1:]), "process_cpu_seconds": process,
           "process_cpu_steady": median(process[1:]), "threads": v.threads, "error": v.error,
           **v.result}
    if "fit_epoch_seconds" in out:  # fit times its epoch from before the baton wait: take it out
        out["fit_epoch_seconds"] = [f - w for f, w in zip(out["fit_epoch_seconds"], v.loader.waits,
                                                          strict=False)]
    return out


def paired_ratio(x: dict, y: dict, key: str = "epoch_seconds") -> float | None:
    """Median over epochs 2..E of x's epoch / y's epoch of the same round (robust to drift)."""
    pairs = list(zip(x[key][1:], y[key][1:], strict=False))
    return median([p / q for p, q in pairs]) if pairs else None


# ---------------------------------------------------------------- variants


class InferenceModeSource:
    """A teacher source that runs another under torch.inference_mode (a lever); with `clone`,
    its outputs are cloned into ordinary tensors on the way out."""

    def __init__(self, inner, clone: bool = False):
        self.inner, self.clone = inner, clone

    def targets(self, batch):
        with torch.inference_mode():
            out = self.inner.targets(batch)
        if self.clone:
            out = Outputs(out.logits.clone(), {k: v.clone() for k, v in out.features.items()})
        return out

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def reference(self):
        return self.inner.reference()


def InferenceModeDistiller(teacher, student, terms=None, ce_weight=1.0, clone=False):  # noqa: N802
    """distill's Distiller with the teacher forward under torch.inference_mode (a lever)."""
    d = Distiller(teacher, student, terms, ce_weight)
    if d.source is not None:
        d.attach_source(InferenceModeSource(d.source, clone))
    return d


def CloningInferenceModeDistiller(teacher, student, terms=None, ce_weight=1.0):  # noqa: N802
    """The same, with the teacher's outputs cloned into ordinary tensors on the way out."""
    return InferenceModeDistiller(teacher, student, terms, ce_weight, clone=True)


def classic_variant(s, teacher, student, x, y, epochs):
    def run(timed):
        g = torch.Generator().manual_seed(SEED)
        loader = timed(DataLoader(TensorDataset(x, y), batch_size=s.batch_size, shuffle=True,
                                  generator=g))
        history = classic_train_knowledge_distillation(
            teacher, student, loader, epochs, s.lr, s.T, SOFT_WEIGHT, CE_WEIGHT, DEVICE,
            make_optimizer=s.make_optimizer)
        return {"final_train_loss": history[-1]}

    return run


def fit_variant(s, teacher, student, x, y, epochs, *, cache=False, distiller_cls=Distiller,
                transform=None):
    """(b), (c) or, with teacher None, (d) through distill.fit."""

    def run(timed):
        if teacher is None:
            distiller = distiller_cls(None, student)
        else:
            distiller = distiller_cls(teacher, student, {"kd": (KD(T=s.T), SOFT_WEIGHT)},
                                      ce_weight=CE_WEIGHT)
        loader = TensorLoader(x, y, s.batch_size, shuffle=True, seed=SEED, transform=transform)
        out = {}
        if cache:
            start = time.perf_counter()
            _, reason = open_cache("memory", distiller, loader, epochs=epochs)
            out.update(cache_open_seconds=time.perf_counter() - start, cache=reason)
        val = TensorLoader(x[:64], y[:64], 64, transform=transform)
        cfg = s.train_config(epochs)
        records = []
        fit(distiller, timed(loader), val, cfg, DEVICE, on_epoch=records.append)
        out.update(final_train_loss=records[-1]["train_loss"],
                   fit_epoch_seconds=[r["seconds"] for r in records])
        if cache and distiller.source is not distiller.live:
            out["cache_stats"] = distiller.source.stats()
        return out

    return run


def to_channels_last(b, epoch, index):
    return b.contiguous(memory_format=torch.channels_last)


def train_accuracy(student: nn.Module, x, y, transform=None) -> float:
    return evaluate(student, TensorLoader(x, y, 256, transform=transform), DEVICE)["acc"]


def max_param_diff(a: nn.Module, b: nn.Module) -> float:
    """Largest |difference| between the two models' parameters (buffers left out)."""
    return max(float((p.detach() - q.detach()).abs().max())
               for p, q in zip(a.parameters(), b.parameters(), strict=True))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- main benchmark


def bench_setting(s: Setting, epochs: int, runner: str = "process") -> dict:
    x, y = make_data(s)
    teacher, student = make_models(s, x)
    t_flops, s_flops = count_flops(teacher, s.in_shape), count_flops(student, s.in_shape)
    warm_up(teacher, student, x, s.batch_size)
    students = {k: copy.deepcopy(student) for k in "abcd"}
    variants = [
        Variant("a", classic_variant(s, copy.deepcopy(teacher), students["a"], x, y, epochs),
                students["a"]),
        Variant("b", fit_variant(s, copy.deepcopy(teacher), students["b"], x, y, epochs),
                students["b"]),
        Variant("c", fit_variant(s, copy.deepcopy(teacher), students["c"], x, y, epochs, cache=True),
                students["c"]),
        Variant("d", fit_variant(s, None, students["d"], x, y, epochs), students["d"]),
    ]
    start = time.perf_counter()
    (run_interleaved_processes if runner == "process" else run_interleaved)(variants)
    wall = time.perf_counter() - start
    out = {v.name: epoch_stats(v) for v in variants}
    for k in "abcd":
        out[k]["train_acc"] = train_accuracy(students[k], x, y)
    a, b, c, d = (out[k]["steady"] for k in "abcd")
    ratio = t_flops / s_flops
    ratios = {"b/a": b / a, "c/d": c / d, "a/c": a / c} if None not in (a, b, c, d) else {}
    a, b, c, d = (out[k]["cpu_steady"] for k in "abcd")
    cpu_ratios = {"b/a": b / a, "c/d": c / d, "a/c": a / c} if None not in (a, b, c, d) else {}
    a, b, c, d = (out[k]["process_cpu_steady"] for k in "abcd")
    process_ratios = {"b/a": b / a, "c/d": c / d, "a/c": a / c} if None not in (a, b, c, d) else {}
    targets = {}
    if cpu_ratios:
        targets["b/a <= 1.03 (CPU)"] = cpu_ratios["b/a"] <= 1.03
    if ratios:
        targets["b/a <= 1.05"] = ratios["b/a"] <= 1.05
        targets["c/d <= 1.10"] = ratios["c/d"] <= 1.10
        if ratio >= 10:
            targets["a/c >= 5"] = ratios["a/c"] >= 5
    return {
        "setting": s.key, "label": s.label, "samples": len(x), "in_shape": list(s.in_shape),
        "classes": s.classes, "batch_size": s.batch_size, "epochs": epochs, "runner": runner,
        "hyperparameters": s.hyperparameters(), "teacher_bn_calibrated": s.calibrate_teacher_bn,
        "teacher": {"model": s.teacher[0], **s.teacher[1], "flops": t_flops},
        "student": {"model": s.student[0], **s.student[1], "flops": s_flops},
        "flops_ratio": ratio, "variants": out, "ratios": ratios, "targets": targets,
        "cpu_ratios": cpu_ratios, "process_cpu_ratios": process_ratios,
        "paired_ratios": {"b/a": paired_ratio(out["b"], out["a"]),
                          "c/d": paired_ratio(out["c"], out["d"]),
                          "a/c": paired_ratio(out["a"], out["c"])},
        "paired_cpu_ratios": {"b/a": paired_ratio(out["b"], out["a"], "cpu_seconds"),
                              "c/d": paired_ratio(out["c"], out["d"], "cpu_seconds"),
                              "a/c": paired_ratio(out["a"], out["c"], "cpu_seconds")},
        "b_c_identical": all(torch.equal(p, q) for p, q in zip(
            students["b"].state_dict().values(), students["c"].state_dict().values(), strict=True)),
        "b_c_max_param_diff": max_param_diff(students["b"], students["c"]),
        "wall_seconds": wall,
    }


def fmt(v, spec=".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def print_main(rows: list[dict]) -> None:
    print(f"\nPer-epoch wall time (s), training pass, torch.set_num_threads({THREADS}), "
          "steady = median of epochs 2..E, variants interleaved epoch by epoch.\n")
    print("| setting | FLOPs ratio T/S | a s/epoch | b | c (steady) | c first epoch | d "
          "| b/a | c/d | a/c |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        v, q = r["variants"], r["ratios"]
        print(f"| {r['label']} ({r['samples']} x {'x'.join(map(str, r['in_shape']))}, "
              f"{r['epochs']} epochs) | {r['flops_ratio']:,.0f} | {fmt(v['a']['steady'])} | "
              f"{fmt(v['b']['steady'])} | {fmt(v['c']['steady'])} | {fmt(v['c']['first'])} | "
              f"{fmt(v['d']['steady'])} | {fmt(q.get('b/a'), '.2f')} | "
              f"{fmt(q.get('c/d'), '.2f')} | {fmt(q.get('a/c'), '.1f')} |")
    print("\nThe same in CPU seconds of each variant's thread (time.thread_time; insensitive to "
          "waiting for a CPU on this shared machine); 'process' is time.process_time over the "
          "same passes, 'paired' the median of per-round ratios:\n")
    print("| setting | a | b | c (steady) | c first epoch | d | b/a | c/d | a/c "
          "| b/a process | b/a paired |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        v, q = r["variants"], r["cpu_ratios"]
        print(f"| {r['setting']} | {fmt(v['a']['cpu_steady'])} | {fmt(v['b']['cpu_steady'])} | "
              f"{fmt(v['c']['cpu_steady'])} | {fmt(v['c']['cpu_first'])} | "
              f"{fmt(v['d']['cpu_steady'])} | {fmt(q.get('b/a'), '.3f')} | "
              f"{fmt(q.get('c/d'), '.2f')} | {fmt(q.get('a/c'), '.1f')} | "
              f"{fmt(r['process_cpu_ratios'].get('b/a'), '.3f')} | "
              f"{fmt(r['paired_cpu_ratios'].get('b/a'), '.3f')} |")
    print("\nTargets (wall time unless marked CPU; a/c only where the teacher costs >= 10x the "
          "student's FLOPs); in brackets the same ratio in the other clock:")
    for r in rows:
        met = [f"{k}: {'met' if ok else 'MISSED'} "
               + (f"({r['cpu_ratios'][k.split()[0]]:.3f}) [wall {r['ratios'][k.split()[0]]:.3f}]"
                  if "(CPU)" in k else
                  f"({r['ratios'][k.split()[0]]:.3f}) [{fmt(r['cpu_ratios'].get(k.split()[0]), '.3f')}]")
               for k, ok in r["targets"].items()]
        print(f"- {r['setting']}: " + "; ".join(met))
    print("\nAfter the same epochs: final epoch's mean train loss / train-set accuracy (%):\n")
    print("| setting | a | b | c | d (CE only) | b, c identical students |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        v = r["variants"]
        cells = [f"{fmt(v[k].get('final_train_loss'), '.4f')} / {fmt(v[k].get('train_acc'), '.1f')}"
                 for k in "abcd"]
        same = "yes" if r["b_c_identical"] else f"no (max |diff| {r['b_c_max_param_diff']:.2e})"
        print(f"| {r['setting']} | {' | '.join(cells)} | {same} |")
    errors = [(r["setting"], k, v["error"]) for r in rows for k, v in r["variants"].items()
              if v["error"]]
    for setting, k, e in errors:
        print(f"ERROR {setting} ({k}): {e}")


# ---------------------------------------------------------------- levers


def bench_levers(s: Setting, epochs: int) -> dict:
    x, y = make_data(s)
    teacher, student = make_models(s, x)
    warm_up(teacher, student, x, s.batch_size)
    cl_teacher = copy.deepcopy(teacher).to(memory_format=torch.channels_last)
    student_conv = is_conv(student)
    warm_up(cl_teacher, copy.deepcopy(student).to(memory_format=torch.channels_last),
            to_channels_last(x, 0, None), s.batch_size)

    def fresh(channels_last=False):
        m = copy.deepcopy(student)
        return m.to(memory_format=torch.channels_last) if channels_last and student_conv else m

    students, specs = {}, {}

    def add(name, lever, baseline, *, teacher_=None, channels_last=False, compiled=False,
            distiller_cls=Distiller):
        students[name] = fresh(channels_last)
        model = torch.compile(students[name]) if compiled else students[name]
        t = None if teacher_ is None else copy.deepcopy(teacher_)
        specs[name] = {"lever": lever, "baseline": baseline}
        return Variant(name, fit_variant(
            s, t, model, x, y, epochs, distiller_cls=distiller_cls,
            transform=to_channels_last if channels_last else None))

    variants = [
        add("b", "baseline: distill online (teacher under no_grad)", None, teacher_=teacher),
        add("b+inference_mode", "teacher forward under torch.inference_mode", "b",
            teacher_=teacher, distiller_cls=InferenceModeDistiller),
        add("b+channels_last", "channels_last teacher" + (" and student" if student_conv else ""),
            "b", teacher_=cl_teacher, channels_last=True),
        add("d", "baseline: plain student (no teacher)", None),
    ]
    if student_conv:
        variants.append(add("d+channels_last", "channels_last student", "d", channels_last=True))
    variants.append(add("d+compile", "torch.compile(student)", "d", compiled=True))
    start = time.perf_counter()
    run_interleaved(variants)
    wall = time.perf_counter() - start
    out = {}
    for v in variants:
        r = epoch_stats(v) | specs[v.name]
        base = r["baseline"]
        if base and r["steady"] and out[base]["steady"]:
            r["ratio_vs_baseline"] = r["steady"] / out[base]["steady"]
            r["paired_ratio_vs_baseline"] = paired_ratio(r, out[base])
            if r["cpu_steady"] and out[base]["cpu_steady"]:
                r["cpu_ratio_vs_baseline"] = r["cpu_steady"] / out[base]["cpu_steady"]
            r["max_param_diff_vs_baseline"] = max_param_diff(students[v.name], students[base])
        fit_s = r.get("fit_epoch_seconds") or []
        if v.name.endswith("compile") and len(fit_s) > 1:
            # epoch 1 holds the compilations: training graphs (plus a recompile for a short last
            # batch) in the timed pass, the eval-mode graph in fit's validation
            r["compile_seconds_train_pass"] = r["first"] - r["steady"]
            r["compile_seconds_fit_epoch"] = fit_s[0] - median(fit_s[1:])
        out[v.name] = r
    return {"setting": s.key, "label": s.label, "samples": len(x), "epochs": epochs,
            "variants": out, "wall_seconds": wall}


def inference_mode_probe() -> dict:
    """For every registered loss term: one training step with the teacher's outputs made under
    inference_mode (as-is, then cloned). Small CNNs on 8x8 inputs; feature terms on layer2."""
    torch.manual_seed(SEED)
    x = torch.randn(16, 1, 8, 8)
    y = torch.randint(0, 10, (16,))
    batch = [x, y, torch.arange(16)]
    results = {}
    for name, cls in LOSSES.items():
        row = {}
        for label, dcls in (("no_grad", Distiller), ("inference_mode", InferenceModeDistiller),
                            ("inference_mode+clone", CloningInferenceModeDistiller)):
            torch.manual_seed(SEED)
            teacher = create_model("cnn", 10, (1, 8, 8), channels=[16, 32])
            student = create_model("cnn", 10, (1, 8, 8), channels=[8, 16])
            try:
                term = cls(student="layer2", teacher="layer2") if _needs_layers(cls) else cls()
                d = dcls(teacher, student, {name: (term, 1.0)})
                if d.needs_setup:
                    d.setup(Batch(x))
                d.train()
                d(batch).loss.backward()
                grad = torch.cat([p.grad.flatten() for p in student.parameters()
                                  if p.grad is not None])
                row[label] = "ok"
                row.setdefault("_grads", {})[label] = grad
            except Exception as e:
                row[label] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        grads = row.pop("_grads", {})
        if "no_grad" in grads:
            for label in ("inference_mode", "inference_mode+clone"):
                if label in grads:
                    row[f"{label} grads == no_grad"] = bool(torch.equal(grads[label], grads["no_grad"]))
        results[name] = row
    return results


def _needs_layers(cls) -> bool:
    import inspect

    params = inspect.signature(cls.__init__).parameters
    return "student" in params and params["student"].default is inspect.Parameter.empty


def print_levers(rows: list[dict], probe: dict | None, compile_cache: str) -> None:
    print(f"\nSpeed levers, per-epoch wall time (s) of the training pass, torch.set_num_threads("
          f"{THREADS}), steady = median of epochs 2..E, interleaved epoch by epoch with the "
          "baseline.\n")
    print("| setting | variant | lever | s/epoch (steady) | first epoch | ratio vs baseline "
          "| CPU-time ratio | max param diff vs baseline | note |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        for name, v in r["variants"].items():
            note = v["error"] or ""
            if "compile_seconds_train_pass" in v:
                note = (f"compile ({compile_cache} cache): {v['compile_seconds_train_pass']:.1f} s "
                        f"in the first training pass, {v['compile_seconds_fit_epoch']:.1f} s in "
                        "fit's first epoch (with validation)")
            base = v["baseline"] or "-"
            print(f"| {r['setting']} | {name} | {v['lever']} | {fmt(v['steady'])} | "
                  f"{fmt(v['first'])} | {fmt(v.get('ratio_vs_baseline'), '.2f')} (vs {base}) | "
                  f"{fmt(v.get('cpu_ratio_vs_baseline'), '.2f')} | "
                  f"{fmt(v.get('max_param_diff_vs_baseline'), '.1e')} | {note} |")
    if probe:
        print("\nTeacher outputs made under torch.inference_mode, used by each loss term "
              "(one training step; 'grads ==' compares with no_grad bit for bit):\n")
        print("| term | inference_mode | grads == no_grad | inference_mode + clone | "
              "grads == no_grad |")
        print("|---|---|---|---|---|")
        for name, row in probe.items():
            print(f"| {name} | {row.get('inference_mode')} | "
                  f"{row.get('inference_mode grads == no_grad', '-')} | "
                  f"{row.get('inference_mode+clone')} | "
                  f"{row.get('inference_mode+clone grads == no_grad', '-')} |")


# ---------------------------------------------------------------- entry point


def machine_info() -> dict:
    cpu = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"platform": platform.platform(), "cpu_model": cpu, "cpu_count": os.cpu_count(),
            "loadavg_at_start": load, "python": platform.python_version(),
            "torch": torch.__version__, "distill": distill.__version__}


def git_state() -> dict:
    def git(*args):
        try:
            out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                                 cwd=Path(__file__).resolve().parent)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"),
            "modified": status.splitlines() if status else ([] if status is not None else None)}


def write_section(path: Path, key: str, section: dict) -> None:
    data = {}
    if path.is_file():
        with contextlib.suppress(json.JSONDecodeError):
            data = json.loads(path.read_text())
    data[key] = section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levers", action="store_true",
                        help="measure the speed levers (settings cifar and mnist) instead")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=None)
    parser.add_argument("--epochs", type=int, default=None, help="override every setting's epochs")
    parser.add_argument("--no-probe", action="store_true",
                        help="--levers: skip the per-loss-term inference_mode check")
    parser.add_argument("--warm-compile-cache", action="store_true",
                        help="--levers: let torch.compile reuse inductor's on-disk cache (default: "
                             "an empty cache directory, so the compile time is a first run's)")
    parser.add_argument("--runner", choices=["process", "thread"], default="process",
                        help="main benchmark: each variant in its own forked process (default; "
                             "it trains in a main thread, as a user's script does) or in a thread "
                             "of this process (how it ran before; --levers always uses threads)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    cold_dir = None
    if args.levers and not args.warm_compile_cache:
        cold_dir = tempfile.mkdtemp(prefix="speed-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cold_dir  # read by inductor at each compile
    torch.set_num_threads(THREADS)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    names = args.settings or (["cifar", "mnist"] if args.levers else list(SETTINGS))
    machine, git = machine_info(), git_state()  # as the run starts
    started = time.perf_counter()
    rows = []
    for name in names:
        s = SETTINGS[name]
        epochs = args.epochs or (s.lever_epochs if args.levers else s.epochs)
        log(f"[{time.perf_counter() - started:6.0f}s] {name}: {epochs} epochs per variant ...")
        rows.append(bench_levers(s, epochs) if args.levers else bench_setting(s, epochs, args.runner))
        log(f"[{time.perf_counter() - started:6.0f}s] {name}: done in {rows[-1]['wall_seconds']:.0f} s")
    probe = inference_mode_probe() if args.levers and not args.no_probe else None
    section = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "threads": THREADS, "torch_num_threads": torch.get_num_threads(),
        "machine": machine, "git": git,
        "loadavg_at_end": os.getloadavg(), "seconds": time.perf_counter() - started,
        "hyperparameters": {"optimizer": "adam", "lr": LR, "T": T, "soft_target_weight": SOFT_WEIGHT,
                            "ce_weight": CE_WEIGHT, "seed": SEED,
                            "note": "defaults; each setting's own are in settings[i].hyperparameters"},
        "settings": rows,
    }
    if probe is not None:
        section["inference_mode_probe"] = probe
    if args.levers:
        section["compile_cache"] = "cold (empty directory)" if cold_dir else "warm (inductor default)"
    if cold_dir:
        shutil.rmtree(cold_dir, ignore_errors=True)
    write_section(args.out, "levers" if args.levers else "main", section)
    if args.levers:
        print_levers(rows, probe, section["compile_cache"].split()[0])
    else:
        print_main(rows)
    print(f"\n(written to {args.out})")


if __name__ == "__main__":
    main()
