"""torchrun: a 2-process gloo run equals the 1-process run with the same global batch and seed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from distill.cli import main


def _args(data_file, out):
    return ["run", "--out", str(out), "--quiet", "--no-report", "data.name=npz", f"data.path={data_file}",
            "data.val_fraction=0.2", "data.batch_size=48", "data.label_fraction=1.0",
            "train.epochs=2", "train.threads=1", "teacher.model=mlp", "teacher.kwargs.hidden=[32]",
            "teacher.kwargs.dropout=0",  # dropout masks are per process by design
            "student.kwargs.hidden=[8]", "stages=[teacher,distill]"]


def test_two_processes_equal_one(tmp_path, data_file):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_args(data_file, one)) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           "-m", "distill", *_args(data_file, two)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((two / "summary.json").read_text())
    assert summary["processes"] == 2
    for stem in ("teacher-last", "distill-last"):
        a, b = load_file(str(one / f"{stem}.safetensors")), load_file(str(two / f"{stem}.safetensors"))
        assert a.keys() == b.keys()
        for key in a:
            # not bit-exact: each process runs 24-row matmuls where one process runs 48 rows,
            # and gloo sums the two halves' gradients in another order than one backward does
            assert (a[key] - b[key]).abs().max().item() <= 1e-5, (stem, key)
    # metrics were reduced over both processes: the logged epoch losses agree too (to rounding,
    # for the reasons above)
    lines = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    lines2 = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == len(lines2)  # only rank 0 wrote
    for r1, r2 in zip(lines, lines2, strict=True):
        assert r1["train_loss"] == pytest.approx(r2["train_loss"], rel=1e-4)
        assert r1["val_acc"] == pytest.approx(r2["val_acc"])


def test_ddp_run_stopped_by_sigterm_resumes_exactly(tmp_path, data_file):
    import signal
    import time

    def torchrun(port, *args):
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                f"--master_port={port}", "-m", "distill", *args]

    args = [a for a in _args(data_file, "X") if a not in ("train.epochs=2",)]
    args[args.index("--out") + 1:args.index("--out") + 2] = []
    args.remove("--out")
    # cache=off: resumed and uninterrupted runs must compute every teacher target the same way.
    # An in-memory cache starts empty after the restart, so the resumed run would recompute
    # targets that the uninterrupted run reads from its cache, computed in other batches at other
    # row positions: not the same computation on every CPU, so not comparable bit for bit.
    args += ["train.epochs=30", "train.deterministic=true", "cache=off"]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert subprocess.run(torchrun(29535, *args, "--out", str(whole)), capture_output=True, timeout=600).returncode == 0
    proc = subprocess.Popen(torchrun(29536, *args, "--out", str(stopped)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    pointer, deadline = stopped / "checkpoint.json", time.time() + 300
    while not (pointer.exists() and "distill" in pointer.read_text()):
        assert proc.poll() is None and time.time() < deadline, "no distill checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # torchrun forwards it; every process stops at the same step
    proc.wait(timeout=300)
    assert not (stopped / "summary.json").exists()
    resume = subprocess.run(torchrun(29537, "run", "--quiet", "--no-report", "--resume", str(stopped)),
                            capture_output=True, text=True, timeout=600)
    assert resume.returncode == 0, resume.stderr[-3000:]
    a = load_file(str(whole / "distill-last.safetensors"))
    b = load_file(str(stopped / "distill-last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
