"""The streaming loader and the teacher cache at scale (issue 16, parts 2 and 5): under torchrun
each process reads only its own rows and the 2-process run equals the 1-process run; a disk
cache shared by the processes computes every (sample, view) once, in the process that first
draws it; a disk cache for millions of samples stays small in RAM and on disk, says its size
and is refused when the disk cannot hold it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import distill.stores
import distill.tasks.classification
from distill.cache import TeacherCache, cache_size
from distill.cli import main
from distill.config_schema import DataConfig
from distill.contracts import Outputs
from distill.data import build_data
from distill.data.samples import ArraySamples
from distill.data.stream import StreamLoader
from distill.errors import DistillError
from distill.stores import format_bytes
from test_stream_loader import Recorded  # the same recording Samples


def torchrun(*args: str) -> list[str]:
    # --standalone: a rendezvous on a free port (a fixed port can meet another test's group)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]


# ---------------------------------------------------------------- each process its own rows


def reads(log: Path) -> list[int]:
    return [int(i) for line in log.read_text().splitlines() for i in line.split()] if log.exists() else []


@pytest.mark.parametrize("workers", [0, 1])
def test_sharded_stream_loaders_read_only_their_rows(tmp_path, workers):
    x = np.arange(90 * 2, dtype=np.float32).reshape(90, 2)
    labels = np.arange(90) % 3
    whole = StreamLoader(ArraySamples(x, labels), 20, shuffle=True, seed=5)
    logs = [tmp_path / f"rank{r}.txt" for r in (0, 1)]
    shards = [StreamLoader(Recorded(x, labels, logs[r]), 20, shuffle=True, seed=5, workers=workers).shard(r, 2)
              for r in (0, 1)]
    for epoch, skip in ((0, 0), (1, 0), (2, 3)):
        for loader in (whole, *shards):
            loader.set_epoch(epoch, skip)
        for log in logs:
            log.unlink(missing_ok=True)
        own = [[], []]
        for full, *parts in zip(whole, *shards, strict=True):
            a, b = (p.index.tolist() for p in parts)
            assert a + b == full.index.tolist() and not set(a) & set(b)  # the global batch, split
            assert len(a) - len(b) in (0, 1)
            for r, p in enumerate(parts):
                assert torch.equal(p.inputs, full.inputs[len(a) * r:len(a) * r + len(p)])
                own[r] += p.index.tolist()
        for r in (0, 1):  # each reads exactly its own rows, once
            assert sorted(reads(logs[r])) == sorted(own[r])


# ---------------------------------------------------------------- torchrun, stream loader




def blob_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--out", str(out), "--quiet", "--no-report", "data.name=npz", f"data.path={data}",
            "data.val_fraction=0.2", "data.batch_size=48", "data.label_fraction=1.0", "train.epochs=2",
            "train.threads=1", "teacher.model=mlp", "teacher.kwargs.hidden=[32]", "teacher.kwargs.dropout=0",
            "student.kwargs.hidden=[8]", "stages=[teacher,distill]", *extra]


def close(a: Path, b: Path, stems=("teacher-last", "distill-last"), atol=1e-5) -> None:
    for stem in stems:
        u, v = load_file(str(a / f"{stem}.safetensors")), load_file(str(b / f"{stem}.safetensors"))
        assert u.keys() == v.keys()
        for key in u:
            # not bit-exact: each process runs half-batch matmuls, and gloo sums the halves'
            # gradients in another order than one backward does (as in test_ddp)
            assert (u[key] - v[key]).abs().max().item() <= atol, (stem, key)


def test_two_stream_processes_equal_one(tmp_path, data_file):
    stream = ["data.loader=stream", "data.workers=1"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(blob_args(data_file, one, *stream)) == 0
    proc = subprocess.run(torchrun("-m", "distill", *blob_args(data_file, two, *stream)),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((two / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["data"]["loader"] == "stream"
    close(one, two)


# ---------------------------------------------------------------- torchrun, shared disk cache

# Runs distill's CLI and records, per process, the entry ids this process stored in the cache
# (TeacherCache.put: the teacher's outputs for its own misses) and the cache's counters.
TRACKER = """
import json, os, sys
import distill.cache as cache
from distill.cli import main

made, puts = [], []
init, put = cache.TeacherCache.__init__, cache.TeacherCache.put

def track_init(self, *args, **kwargs):
    init(self, *args, **kwargs)
    made.append(self)

def track_put(self, keys, *args, **kwargs):
    puts.extend(keys.tolist())
    return put(self, keys, *args, **kwargs)

cache.TeacherCache.__init__, cache.TeacherCache.put = track_init, track_put
code = main(sys.argv[2:])
record = {"code": code, "puts": puts, "stats": made[-1].stats() if made else None}
with open(os.path.join(sys.argv[1], "rank%s.json" % os.environ.get("RANK", "0")), "w") as f:
    json.dump(record, f)
sys.exit(code)
"""




EPOCHS = 6


def image_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--out", str(out), "--quiet", "--no-report", "data.name=npz", f"data.path={data}",
            "data.val_fraction=0.2", "data.batch_size=32", "data.label_fraction=1.0", f"train.epochs={EPOCHS}",
            "train.threads=1", "teacher.model=mlp", "teacher.kwargs.hidden=[32]", "teacher.kwargs.dropout=0",
            "student.kwargs.hidden=[8]", "stages=[teacher,distill]", "data.augment=crop_flip",
            "data.loader=stream", "data.workers=1", "cache=disk", *extra]


def drawn_entries(data: Path) -> tuple[list[set[int]], int, int]:
    """Per rank, the cache entries (index * views + view) its shards draw first, over all
    epochs; the number of lookups; and how many of them draw an entry the other rank drew
    first. What each process must compute if no entry is computed twice and an entry another
    process stored earlier is a hit."""
    train = build_data(DataConfig(name="npz", path=str(data), val_fraction=0.2, batch_size=32,
                                  label_fraction=1.0, augment="crop_flip", loader="memory")).train
    views, first, lookups, across = train.augment.num_views, [set(), set()], 0, 0
    for epoch in range(EPOCHS):
        train.set_epoch(epoch)
        for batch in train:
            lookups += len(batch)
            keys = (batch.index * views + batch.view).tolist()
            for r, part in enumerate((keys[:len(keys) // 2], keys[len(keys) // 2:])):
                across += len(set(part) & first[1 - r])
                first[r] |= set(part) - first[1 - r]
    return first, lookups, across


def test_a_shared_disk_cache_computes_each_entry_once(tmp_path, images):
    script = tmp_path / "tracked.py"
    script.write_text(textwrap.dedent(TRACKER))
    one, two = tmp_path / "one", tmp_path / "two"
    proc = subprocess.run(torchrun(str(script), str(tmp_path), *image_args(images, two)),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    first, lookups, across = drawn_entries(images)
    assert across > 0  # this data draws entries the other process stored first
    for r, record in enumerate(ranks):
        puts = record["puts"]
        assert len(puts) == len(set(puts)), "an entry was stored twice"
        assert set(puts) == first[r]  # its own rows, only those no process had stored before
        assert record["stats"]["misses"] == len(puts)
    a, b = (set(r["puts"]) for r in ranks)
    assert not a & b  # no (sample, view) computed in both processes
    misses = sum(r["stats"]["misses"] for r in ranks)
    hits = sum(r["stats"]["hits"] for r in ranks)
    assert misses == len(a | b) and misses + hits == lookups
    assert hits > 0 and all(r["stats"]["filled"] == misses for r in ranks)  # one shared store
    # and the student is the 1-process run's, which computed the same entries alone
    assert main(image_args(images, one)) == 0
    close(one, two)


def test_disk_cache_across_machines_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(distill.stores, "distributed", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(DistillError, match="4 processes, 2 on this machine. Use cache: memory"):
        TeacherCache(10, {"logits": (3,)}, {}, storage="disk", path=tmp_path / "tc")
    assert not (tmp_path / "tc").exists()


# ---------------------------------------------------------------- millions of samples

# A fresh process (its peak RSS is its own): a disk cache of 2,000,000 samples x 10 classes,
# 256 samples looked up in each of two epochs; prints the peak RSS growth, the files'
# apparent and allocated bytes, and checks the looked-up targets.
HUGE = """
import json, resource, sys
import numpy as np
import torch
from distill.cache import TeacherCache
from distill.contracts import Outputs

N, C = 2_000_000, 10
dtype, topk, path = sys.argv[1], (int(sys.argv[2]) or None), sys.argv[3]
torch.manual_seed(0)
w = torch.randn(4, C)
compute = lambda x: Outputs(x @ w)
g = torch.Generator().manual_seed(1)
idx = torch.randperm(N, generator=g)[:256].view(4, 64)  # (the permutation itself: 16 MB)
x = torch.randn(4, 64, 4, generator=g)
compute(x[0]).logits.topk(3, dim=-1), torch.logsumexp(x[0], -1)  # torch's first-use allocations
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
cache = TeacherCache(N, {"logits": (C,)}, {"test": "huge"}, storage="disk", path=path, dtype=dtype, topk=topk)
memmaps = all(isinstance(a, np.memmap) for a in cache._maps)
errors = []
for epoch in range(2):
    cache.set_epoch(epoch)  # the one O(N) pass: the filled bitmap, once per epoch
    for i, xi in zip(idx, x):
        got = cache.lookup(xi, i, compute).logits
        want = compute(xi).logits
        if topk:  # the top k are kept (in fp16 or fp32), the rest rebuilt
            top = want.topk(topk, dim=-1).indices
            errors.append((got.gather(1, top) - want.gather(1, top)).abs().max().item())
        else:
            errors.append((got - want).abs().max().item())
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10) - before
files = [p for p in __import__("pathlib").Path(path).glob("*.npy")]
print(json.dumps({"grown": grown, "nbytes": cache.nbytes, "memmaps": memmaps, "stats": cache.stats(),
                  "apparent": sum(p.stat().st_size for p in files),
                  "allocated": sum(p.stat().st_blocks * 512 for p in files), "error": max(errors)}))
"""


@pytest.mark.parametrize("dtype, topk", [("fp16", 0), ("fp16", 3), ("fp32", 3)])
def test_a_disk_cache_for_millions_of_samples_stays_small(tmp_path, dtype, topk):
    script = tmp_path / "huge.py"
    script.write_text(textwrap.dedent(HUGE))
    proc = subprocess.run([sys.executable, str(script), dtype, str(topk), str(tmp_path / "tc")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.splitlines()[-1])
    size = 2 if dtype == "fp16" else 4
    per_entry = 1 + (10 * size if not topk else topk * (size + 4) + 4)
    assert r["nbytes"] == 2_000_000 * per_entry  # what the run says before training
    assert r["memmaps"] and r["apparent"] >= r["nbytes"]
    assert r["allocated"] < r["nbytes"] / 4  # sparse: only the pages written use the disk
    # lookups touch their rows' pages only: the peak RSS grows by far less than the store
    assert r["grown"] < r["nbytes"] / 2, r
    assert r["stats"]["misses"] == 256 and r["stats"]["hits"] == 256 and r["stats"]["filled"] == 256
    assert r["error"] < (0.05 if dtype == "fp16" else 1e-6)


# ---------------------------------------------------------------- the size, said and checked


def test_a_disk_cache_larger_than_the_free_space_is_refused(tmp_path, monkeypatch):
    real = distill.stores.shutil.disk_usage

    def tiny(path):
        return real(path)._replace(free=1 << 20)

    monkeypatch.setattr(distill.stores.shutil, "disk_usage", tiny)
    with pytest.raises(DistillError, match=r"can grow to 20\.03 MiB .* has 1\.00 MiB free"):
        TeacherCache(1_000_000, {"logits": (10,)}, {}, storage="disk", path=tmp_path / "tc", dtype="fp16")
    TeacherCache(20_000, {"logits": (10,)}, {}, storage="disk", path=tmp_path / "small", dtype="fp16")


def test_the_run_says_the_cache_size_before_training(tmp_path, images, capsys):
    capsys.readouterr()
    args = [a for a in image_args(images, tmp_path / "run", "train.epochs=1") if a != "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out.replace("\n", " ")
    nbytes = cache_size(160, 162, {"logits": (4,)})  # crop_flip on 8 x 8: 9 x 9 offsets x 2 flips
    said = (f"Teacher cache for the distill stage: disk in '<run folder>/teacher_cache', 162 view(s)/sample, "
            f"up to {format_bytes(nbytes)} of disk")
    assert " ".join(said.split()) in " ".join(out.split())
    assert out.index("Teacher cache for the distill stage") < out.index("Schedule:") < out.index("teacher ")


def test_a_cache_that_cannot_fit_is_refused_before_training(tmp_path, images, capsys, monkeypatch):
    real = distill.stores.shutil.disk_usage
    with monkeypatch.context() as m:
        m.setattr(distill.stores.shutil, "disk_usage", lambda path: real(path)._replace(free=1000))
        out = tmp_path / "disk"
        assert main(image_args(images, out, f"cache.dir={tmp_path / 'cache'}")) == 2
    err = capsys.readouterr().err
    assert f"The teacher cache in '{tmp_path}' can grow to" in err and "1000 B free" in err, err
    assert not out.exists()  # refused before the run folder was made, let alone a stage trained
    with monkeypatch.context() as m:
        m.setattr(distill.tasks.classification, "default_memory_budget", lambda: 1000)
        assert main(image_args(images, tmp_path / "memory", "cache=memory")) == 2
        assert "of memory (160 samples x 162 views); the budget is 1000 B" in capsys.readouterr().err
        args = [a for a in image_args(images, tmp_path / "auto", "train.epochs=30", "cache=auto",
                                      "data.augment=none") if a != "--quiet"]
        assert main(args) == 0
        assert "Teacher cache for the distill stage: off: the cache would need" in capsys.readouterr().out


def test_fill_under_ddp_splits_a_disk_cache_between_the_processes(tmp_path, monkeypatch):
    """Two processes' fills of one disk cache (as torchrun runs them: rank 0, rank 1) compute
    each sample once, half each, into the shared files."""
    import distill.cache

    x, labels = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32), np.arange(50) % 2
    loader = StreamLoader(ArraySamples(x, labels), 8)
    w = torch.randn(3, 2)
    caches = [TeacherCache(50, {"logits": (2,)}, {"t": 1}, storage="disk", path=tmp_path / "tc") for _ in (0, 1)]
    rows = [[], []]
    monkeypatch.setattr(distill.cache, "distributed", lambda: True)
    monkeypatch.setattr(distill.cache, "world_size", lambda: 2)
    monkeypatch.setattr(distill.cache, "all_gather_objects", lambda obj: [obj, obj])
    for r, cache in enumerate(caches):
        monkeypatch.setattr(distill.cache, "rank", lambda r=r: r)
        cache.fill(lambda b, r=r: rows[r].append(len(b)) or Outputs(b @ w), loader, batch_size=10)
    assert sum(rows[0]) == sum(rows[1]) == 25
    assert caches[1].complete and caches[1].stats()["filled"] == 50  # sees rank 0's half too
    got = caches[0].get(torch.arange(50), "cpu").logits
    assert torch.allclose(got, torch.from_numpy(x) @ w)
