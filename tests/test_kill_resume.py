"""Kills and resumes (issue 14, item 4): kill -9 at random moments never leaves a duplicate
(stage, epoch) metrics line and the resumed run's weights equal an uninterrupted run's; a
second --resume of a folder in use is refused; a resume on changed data is refused."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from distill.cli import main
from distill.resume import lock_folder
from full_disk import RESUME, TINY, interrupted

EXPECTED = [(s, e) for s in ("teacher", "scratch", "distill") for e in (1, 2, 3)]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def keys(out: Path) -> list[tuple[str, int]]:
    text = (out / "metrics.jsonl").read_text()
    assert text.endswith("\n")
    return [(r["stage"], r["epoch"]) for r in map(json.loads, text.splitlines())]


def command(out: Path) -> list[str]:
    if (out / "config.yaml").is_file():
        return [sys.executable, "-m", "distill", "run", "--resume", str(out), *RESUME]
    return [sys.executable, "-m", "distill", "run", "--out", str(out), *TINY]


def weights(out: Path) -> dict:
    return {name: load_file(str(out / f"{name}.safetensors")) for name in ("teacher", "scratch", "distill")}


def same(a: dict, b: dict) -> bool:
    return all(a[n].keys() == b[n].keys() and all(torch.equal(a[n][k], b[n][k]) for k in a[n]) for n in a)


def test_kill_9_at_random_moments_then_resume(tmp_path):
    reference = tmp_path / "reference"
    start = time.perf_counter()
    subprocess.run(command(reference), check=True, env=ENV, timeout=600)
    duration = time.perf_counter() - start
    expected = weights(reference)
    rng, kills, rounds = random.Random(14), 0, 0
    while kills < 10:  # a folder resumed until it finishes; a new folder while kills are short
        out, rounds = tmp_path / f"run-{rounds}", rounds + 1
        attempts = 0
        while not (out / "summary.json").is_file():
            attempts += 1
            assert attempts < 40, "the run never finishes"
            proc = subprocess.Popen(command(out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                proc.wait(timeout=rng.uniform(0.3, duration))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                continue
            assert proc.returncode == 0, proc.stderr.read().decode()
        assert keys(out) == EXPECTED  # no (stage, epoch) twice, none missing
        assert same(weights(out), expected)  # bit for bit the uninterrupted run
    print(f"{kills} kills over {rounds} run folder(s); uninterrupted run {duration:.1f} s")


def test_a_second_resume_of_a_folder_in_use_is_refused(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    interrupted(out, monkeypatch)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    held = lock_folder(out)  # another distill process running the folder
    try:
        assert main(["run", "--resume", str(out), *RESUME]) == 2
    finally:
        os.close(held)
    err = capsys.readouterr().err
    assert f"'{out}' is in use by another distill process (pid {os.getpid()}); wait for it or stop it" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != ".distill.lock"} == {
        k: v for k, v in before.items() if k != ".distill.lock"}
    assert main(["run", "--resume", str(out), *RESUME]) == 0  # once the other one is done
    assert keys(out) == EXPECTED


def test_a_resume_on_changed_data_is_refused(tmp_path, monkeypatch, capsys):
    from sklearn.datasets import load_digits

    digits = load_digits()
    data = tmp_path / "digits.npz"
    x = digits.images.astype(np.float32)[:, None] / 16
    np.savez(data, x=x, y=digits.target)
    out = tmp_path / "run"
    interrupted(out, monkeypatch, ["data.name=npz", f"data.path={data}"])
    x[:5] = 1.0 - x[:5]  # the file replaced mid-run
    np.savez(data, x=x, y=digits.target)
    capsys.readouterr()
    assert main(["run", "--resume", str(out), *RESUME]) == 2
    err = capsys.readouterr().err
    assert "data changed" in err and str(data) in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert (out / "checkpoint.json").is_file()  # nothing lost: the original data resume it
