"""The streaming loader trains the student the memory loader trains, bit for bit (issue 16,
parts 2 and 5): the same Batches, the same weights after a whole `distill run`, an exact
mid-epoch resume that does not read the batches it skips, and the teacher cache on top of it.

Both runs of a pair use the same batch sizes, so BLAS runs the same kernels on the same
values: the weights are compared bit for bit."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import distill.data.stream
import distill.engine
from distill.cli import main
from distill.config_schema import DataConfig
from distill.data import build_data
from distill.data.samples import ArraySamples
from distill.data.stream import StreamLoader

STEPS = 5  # 200 rows - 40 validation = 160 training rows = 5 batches of 32




def data_config(path: Path, **kw) -> DataConfig:
    return DataConfig(name="npz", path=str(path), val_fraction=0.2, batch_size=32, label_fraction=0.5, **kw)


def same_batches(a: list, b: list) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        for name in ("inputs", "targets", "index", "view"):
            u, v = getattr(x, name), getattr(y, name)
            assert (u is None and v is None) or torch.equal(u, v), name


@pytest.mark.parametrize("augment", ["none", "crop_flip"])
@pytest.mark.parametrize("workers", [0, 2])
def test_both_loaders_yield_the_same_batches(images, augment, workers):
    memory = build_data(data_config(images, loader="memory", augment=augment))
    stream = build_data(data_config(images, loader="stream", workers=workers, augment=augment))
    assert (memory.loader, stream.loader) == ("memory", "stream")
    assert isinstance(stream.train, StreamLoader)
    for name in ("teacher_train", "train", "val", "test"):
        a, b = getattr(memory, name), getattr(stream, name)
        for epoch in (0, 1):
            a.set_epoch(epoch)
            b.set_epoch(epoch)
            whole = list(b)
            same_batches(list(a), whole)
        for epoch, skip in ((0, min(2, len(a) - 1)), (1, min(1, len(a) - 1)), (1, len(a) - 1)):
            a.set_epoch(epoch, skip)
            b.set_epoch(epoch, skip)
            tail = list(b)
            same_batches(list(a), tail)
        b.set_epoch(1)
        assert len(tail) == 1 and torch.equal(list(b)[-1].inputs, tail[0].inputs)
    if augment == "crop_flip":  # the draws are the augmentation's views, carried by the batch
        batch = next(iter(stream.train))
        assert batch.view is not None and len(torch.unique(batch.view)) > 1


class Recorded(ArraySamples):
    """ArraySamples that append each `take` (in whatever process) to a file, one line per call."""

    def __init__(self, x, labels, log: Path):
        super().__init__(x, labels)
        self.log = str(log)

    def take_rows(self, idx):
        with open(self.log, "a") as f:
            f.write(" ".join(map(str, idx.tolist())) + "\n")
        return super().take_rows(idx)


def reads(log: Path) -> list[tuple[int, ...]]:
    if not log.exists():
        return []
    return [tuple(map(int, line.split())) for line in log.read_text().splitlines()]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_epoch_does_not_read_the_batches_it_skips(tmp_path, workers):
    x = np.arange(100 * 3, dtype=np.float32).reshape(100, 3)
    log = tmp_path / "takes.txt"
    samples = Recorded(x, np.arange(100) % 4, log)
    loader = StreamLoader(samples, 16, shuffle=True, seed=3, workers=workers)
    order = [tuple(i.tolist()) for i in loader.batch_indices(1, 0)]
    loader.set_epoch(1, skip=4)
    got = list(loader)
    assert [tuple(b.index.tolist()) for b in got] == order[4:]
    assert sorted(reads(log)) == sorted(order[4:])  # exactly the batches yielded, each once
    assert all(torch.equal(b.inputs, torch.from_numpy(x[b.index.numpy()])) for b in got)
    log.unlink()
    assert len(list(loader)) == len(order)  # the next epoch starts at its first batch again
    assert len(reads(log)) == len(order)


# ---------------------------------------------------------------- whole runs


def run_args(images: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--out", str(out), "--quiet", "--no-report", "data.name=npz", f"data.path={images}",
            "data.val_fraction=0.2", "data.batch_size=32", "data.label_fraction=0.5", "train.epochs=2",
            "train.threads=1", "teacher.model=mlp", "teacher.kwargs.hidden=[32]", "teacher.kwargs.dropout=0",
            "student.kwargs.hidden=[8]", "stages=[teacher,distill]", *extra]


def weights(out: Path, stem: str) -> dict[str, torch.Tensor]:
    return load_file(str(out / f"{stem}.safetensors"))


def assert_same_weights(a: Path, b: Path, stems=("teacher", "distill", "distill-last")) -> None:
    for stem in stems:
        u, v = weights(a, stem), weights(b, stem)
        assert u.keys() == v.keys(), stem
        assert all(torch.equal(u[k], v[k]) for k in u), (stem, a.name, b.name)


@pytest.mark.parametrize("augment", ["none", "crop_flip"])
def test_stream_runs_train_the_memory_runs_student(tmp_path, images, augment):
    runs = {"memory": ["data.loader=memory"], "stream-0": ["data.loader=stream", "data.workers=0"],
            "stream-2": ["data.loader=stream", "data.workers=2"]}
    for name, extra in runs.items():
        assert main(run_args(images, tmp_path / name, f"data.augment={augment}", *extra)) == 0, name
    for name in ("stream-0", "stream-2"):
        assert_same_weights(tmp_path / "memory", tmp_path / name)


def test_a_disk_cache_over_the_stream_loader_trains_the_uncached_student(tmp_path, images):
    stream, plain = ["data.loader=stream", "data.workers=2"], ["data.augment=none"]
    assert main(run_args(images, tmp_path / "off", *stream, *plain, "cache=off")) == 0
    assert main(run_args(images, tmp_path / "disk", *stream, *plain, "cache=disk")) == 0
    assert main(run_args(images, tmp_path / "memory", "data.loader=memory", *plain, "cache=disk")) == 0
    assert (tmp_path / "disk" / "teacher_cache" / "meta.json").is_file()
    # the same computations in the same order, whichever loader: bit for bit
    assert_same_weights(tmp_path / "memory", tmp_path / "disk")
    # cached vs online: epoch 2's targets were computed in epoch 1's batches, at other row
    # positions, which some CPUs' BLAS rounds differently (tests/test_cache.py, STUDENT_ATOL)
    for stem in ("distill", "distill-last"):
        u, v = weights(tmp_path / "off", stem), weights(tmp_path / "disk", stem)
        assert all((u[k] - v[k]).abs().max() <= 1e-6 for k in u), stem
    # a second run reuses the filled cache (the stream loader's fingerprint matches): every
    # lookup hits, with the targets the first run used
    cache = f"cache.dir={tmp_path / 'disk' / 'teacher_cache'}"
    assert main(run_args(images, tmp_path / "again", *stream, *plain, "cache=disk", cache)) == 0
    assert_same_weights(tmp_path / "disk", tmp_path / "again")


def _stop_at(monkeypatch, call: int) -> None:
    """A real SIGTERM to this process during the `call`-th training step (1-based, all stages)."""
    real, calls = distill.engine.accumulate_step, [0]

    def step(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            os.kill(os.getpid(), signal.SIGTERM)  # stop_handlers: finish this step, checkpoint
        return real(*args, **kwargs)

    monkeypatch.setattr(distill.engine, "accumulate_step", step)


def _record_reads(monkeypatch, log: Path) -> None:
    """Every batch of rows the stream loaders' workers read, appended to `log`."""
    real = distill.data.stream._Rows.__getitem__

    def getitem(self, idx):
        with open(log, "a") as f:
            f.write(" ".join(map(str, idx.tolist())) + "\n")
        return real(self, idx)

    monkeypatch.setattr(distill.data.stream._Rows, "__getitem__", getitem)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stream_run_stopped_mid_epoch_resumes_exactly(tmp_path, images, capsys, monkeypatch, workers):
    args = ["data.loader=stream", f"data.workers={workers}", "data.augment=crop_flip"]
    assert main(run_args(images, tmp_path / "whole", *args)) == 0
    out = tmp_path / "stopped"
    with monkeypatch.context() as m:
        _stop_at(m, 2 * STEPS + 3)  # the distill stage's third step of its first epoch
        assert main(run_args(images, out, *args)) == 130
    assert not (out / "summary.json").exists()
    log = tmp_path / "reads.txt"
    with monkeypatch.context() as m:
        _record_reads(m, log)
        capsys.readouterr()
        assert main(["run", "--no-report", "--resume", str(out)]) == 0
    assert "Resuming distill after epoch 0, step 3." in capsys.readouterr().out
    assert_same_weights(tmp_path / "whole", out)
    # the resumed stage read the rest of epoch 0 and all of epoch 1, never epoch 0's first three
    # batches (32 rows each; validation and test are read in batches of 512)
    train = build_data(data_config(images, loader="stream", workers=0, augment="crop_flip")).train
    skipped = {tuple(i.tolist()) for i in list(train.batch_indices(0, 0))[:3]}
    rows = [r for r in reads(log) if len(r) == 32]
    assert len(rows) == (STEPS - 3) + STEPS
    assert not skipped & set(rows)


def test_iterating_a_stream_loader_leaves_the_global_rng_alone():
    """Dropout draws from the global RNG: a DataLoader drawing its base seed there would make the
    stream loader's students differ from the memory loader's, and a resume from the run."""
    import numpy as np

    from distill.data.samples import ArraySamples
    from distill.data.stream import StreamLoader

    samples = ArraySamples(np.arange(40, dtype=np.float32).reshape(20, 2), np.arange(20) % 2)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    for workers in (0, 2):
        list(StreamLoader(samples, 4, shuffle=True, workers=workers))
        list(samples.chunks(3, workers))
    assert torch.equal(torch.get_rng_state(), before)
