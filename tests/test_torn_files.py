"""Torn and failed writes (issue 14, item 3): a torn metrics line, a full disk while a checkpoint
or a metrics line is written, damaged checkpoint.json / stages.json. Each ends in one paragraph
naming a way out that works, nothing written before is lost, and the run resumes to the end."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

import distill.checkpoint
import distill.io
import distill.run_files
from distill.cli import main
from distill.io import WriteFailed, append_line, read_lines
from full_disk import RESUME, TINY, interrupted


def keys(out: Path) -> list[tuple[str, int]]:
    """(stage, epoch) of every metrics line; every line must be whole JSON."""
    text = (out / "metrics.jsonl").read_text()
    assert text.endswith("\n")
    return [(r["stage"], r["epoch"]) for r in map(json.loads, text.splitlines())]


EXPECTED = [(s, e) for s in ("teacher", "scratch", "distill") for e in (1, 2, 3)]


def one_paragraph(err: str, *words: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    interrupted(out, monkeypatch)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"stage": "distill", "epoch": 4, "lr": 0.0')  # a kill mid-append
    capsys.readouterr()
    assert main(["run", "--resume", str(out), *RESUME]) == 0, capsys.readouterr().err
    assert keys(out) == EXPECTED
    assert [r["epoch"] for r in read_lines(out / "metrics.jsonl")][-1] == 3


def test_read_lines_skips_torn_and_unreadable_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\nnot json\n[1]\n{"b": 2}\n{"c": 3')
    assert read_lines(path) == [{"a": 1}, {"b": 2}]


def test_a_failed_append_leaves_whole_lines(tmp_path, monkeypatch):
    path = tmp_path / "m.jsonl"
    append_line(path, '{"a": 1}')
    real = os.write

    def half(fd, data):  # the first write lands in part, the next finds the disk full
        if len(data) > 4:
            return real(fd, data[:4])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(distill.io.os, "write", half)
    with pytest.raises(WriteFailed, match="No space left on device; files written so far are intact"):
        append_line(path, '{"b": 2}')
    monkeypatch.undo()
    assert path.read_text() == '{"a": 1}\n'


def _safetensors_full(weights, path):
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def _torch_full(obj, path):
    Path(path).write_bytes(b"PK\x03\x04")  # what torch.save's zip writer leaves behind
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")


def _append_full(path, line):
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


@pytest.mark.parametrize(("target", "name", "fake"), [
    (distill.checkpoint, "save_file", _safetensors_full),
    (distill.checkpoint.torch, "save", _torch_full),
    (distill.run_files, "append_line", _append_full),
])
def test_a_full_disk_is_one_paragraph_and_resumable(target, name, fake, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real, calls = getattr(target, name), []

    def sometimes(*args):
        calls.append(1)
        return (fake if len(calls) == 5 else real)(*args)  # mid-run, in the scratch stage

    with monkeypatch.context() as m:
        m.setattr(target, name, sometimes)
        assert main(["run", "--out", str(out), *TINY]) == 2
    one_paragraph(capsys.readouterr().err, "could not write", "No space left on device",
                  "files written so far are intact", f"free space and continue with distill run --resume {out}")
    assert not list(out.glob(".*.tmp"))  # no temporary file left
    assert main(["run", "--resume", str(out), *RESUME]) == 0, capsys.readouterr().err
    assert keys(out) == EXPECTED


def _mount(path: Path, size: str) -> bool:
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def test_a_real_full_disk_then_resume(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _mount(disk, "1m"):
        pytest.skip("mount -t tmpfs is not permitted here")
    try:
        filler = disk / "filler"
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        filler.write_bytes(b"\0" * (free - 72 * 1024))  # room for the teacher, not the whole run
        out = disk / "run"
        cmd = [sys.executable, "-m", "distill", "run", "--out", str(out), *TINY]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        failed = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert failed.returncode == 2, failed.stderr
        one_paragraph(failed.stderr, "No space left on device", "files written so far are intact",
                      f"free space and continue with distill run --resume {out}")
        assert (out / "config.yaml").is_file() and not (out / "summary.json").exists()
        filler.unlink()  # space freed
        cmd = [sys.executable, "-m", "distill", "run", "--resume", str(out), *RESUME]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr
        assert keys(out) == EXPECTED and (out / "summary.json").is_file()
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_damaged_checkpoint_pointer_names_the_file_to_delete(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    interrupted(out, monkeypatch)
    (out / "checkpoint.json").write_text('{"stage": "dist')
    capsys.readouterr()
    assert main(["run", "--resume", str(out), *RESUME]) == 2
    one_paragraph(capsys.readouterr().err, f"Delete exactly '{out / 'checkpoint.json'}'",
                  "restarts from epoch 0")
    (out / "checkpoint.json").unlink()  # what the message says
    assert main(["run", "--resume", str(out), *RESUME]) == 0, capsys.readouterr().err
    assert keys(out) == EXPECTED


def test_a_damaged_checkpoint_file_names_the_pointer_to_delete(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    interrupted(out, monkeypatch)
    for pt in out.glob("ckpt-*.pt"):
        pt.write_bytes(pt.read_bytes()[:100])
    capsys.readouterr()
    assert main(["run", "--resume", str(out), *RESUME]) == 2
    one_paragraph(capsys.readouterr().err, "cannot be read", f"Delete exactly '{out / 'checkpoint.json'}'")
    (out / "checkpoint.json").unlink()
    assert main(["run", "--resume", str(out), *RESUME]) == 0, capsys.readouterr().err
    assert keys(out) == EXPECTED


def test_a_damaged_stages_record_names_the_file_to_delete(tmp_path, monkeypatch, capsys):
    out, clean = tmp_path / "run", tmp_path / "clean"
    interrupted(out, monkeypatch)
    (out / "stages.json").write_text('{"teacher": {"par')
    capsys.readouterr()
    assert main(["run", "--resume", str(out), *RESUME]) == 2
    one_paragraph(capsys.readouterr().err, "Delete exactly that file", str(out / "stages.json"))
    (out / "stages.json").unlink()
    assert main(["run", "--resume", str(out), *RESUME]) == 0, capsys.readouterr().err
    assert keys(out) == EXPECTED
    assert main(["run", "--out", str(clean), *TINY]) == 0
    from safetensors.torch import load_file

    a, b = load_file(str(out / "distill.safetensors")), load_file(str(clean / "distill.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)  # trained again, with the same result
