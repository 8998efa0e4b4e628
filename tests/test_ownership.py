"""distill deletes or overwrites only what it wrote: the ownership marker (distill.run_folder)
on run folders, --seeds folders and disk teacher caches; orphan cleanup at the end of a run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from distill.cli import main
from distill.errors import DistillError
from distill.run_folder import MARKER, claim, legacy, owned, require, sweep

os.environ.setdefault("OMP_NUM_THREADS", "1")
FAST = ["--quiet", "--no-report", "train.epochs=1", "teacher.model=mlp", "teacher.kwargs.hidden=[16]"]


def user_files(folder: Path, names: dict[str, bytes]) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in names.items():
        (folder / name).write_bytes(data)
    return names


def assert_intact(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        assert (folder / name).read_bytes() == data, name
    assert sorted(p.name for p in folder.iterdir()) == sorted(files), "distill added files"


def refused(argv, capsys, *names) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1, err
    for name in names:
        assert name in err, err
    return err


# ---------------------------------------------------------------- the teacher cache


def test_cache_dir_holding_user_files_is_refused_and_left_intact(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = user_files(tmp_path / "mydata", {"meta.json": b'{"mine": true}\n',
                                              "00-train.npy": b"\x93NUMPY user array bytes"})
    err = refused(["run", "--out", "run", "cache=disk", "cache.dir=mydata", *FAST], capsys,
                  "mydata", "did not write")
    assert "delete it yourself" in err
    assert_intact(tmp_path / "mydata", files)
    assert not (tmp_path / "run").exists()  # refused before any training or folder


def test_stale_marked_cache_is_rebuilt_deleting_only_its_own_files(tmp_path):
    import torch

    from distill.stores import open_arrays

    path = tmp_path / "tc"
    specs = {"filled": ((), torch.bool), "logits": ((3,), torch.float32)}
    arrays, maps = open_arrays(path, {"teacher_sha256": "a"}, specs, (4, 1), 64, rebuild=True)
    arrays["logits"][:] = 1.0
    for m in maps:
        m.flush()
    assert owned(path, "cache")
    listed = json.loads((path / MARKER).read_text())["files"]
    assert sorted(listed) == ["00-filled.npy", "01-logits.npy", "meta.json"]
    (path / "02-mine.npy").write_bytes(b"user")  # the cache's pattern, but not its file
    with pytest.warns(UserWarning, match="stale"):
        arrays, _ = open_arrays(path, {"teacher_sha256": "b"}, specs, (4, 1), 64, rebuild=True)
    assert float(arrays["logits"].abs().sum()) == 0  # rebuilt, not reused
    assert json.loads((path / "meta.json").read_text()) == {"teacher_sha256": "b"}
    assert (path / "02-mine.npy").read_bytes() == b"user"


def test_unmarked_cache_with_a_users_file_of_the_caches_name_is_refused(tmp_path):
    import torch

    from distill.stores import open_arrays

    path = tmp_path / "tc"
    files = user_files(path, {"meta.json": b"{}", "01-logits.npy": b"mine"})
    specs = {"filled": ((), torch.bool), "logits": ((3,), torch.float32)}
    with pytest.raises(DistillError, match="did not write"):
        open_arrays(path, {"teacher_sha256": "a"}, specs, (4, 1), 64, rebuild=True)
    assert_intact(path, files)


# ---------------------------------------------------------------- run folders


def test_out_into_a_users_folder_is_refused_and_left_intact(tmp_path, capsys):
    out = tmp_path / "mine"
    files = user_files(out, {"report.md": b"# my notes\n", "teacher.safetensors": b"my weights",
                             "metrics.jsonl": b'{"stage": "mine", "epoch": 1}\n'})
    refused(["run", "--out", str(out), *FAST], capsys, str(out), "did not write")
    assert_intact(out, files)


def test_out_into_an_existing_empty_folder_is_taken_over(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert main(["run", "--out", str(out), "stages=[teacher]", *FAST]) == 0
    assert owned(out, "run") and (out / "summary.json").is_file()


def test_a_seeds_folder_is_refused_for_a_single_run(tmp_path, capsys):
    out = tmp_path / "seeds"
    claim(out, "seeds", "--out")
    (out / "seeds-run.json").write_text('{"n": 2}')
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    refused(["run", "--out", str(out), *FAST], capsys, str(out), "--seeds folder")
    assert_intact(out, before)
    legacy_seeds = tmp_path / "old-seeds"  # written before markers: seeds-run.json alone
    before = user_files(legacy_seeds, {"seeds-run.json": b'{"n": 2}'})
    refused(["run", "--out", str(legacy_seeds), *FAST], capsys, str(legacy_seeds), "--seeds folder")
    assert_intact(legacy_seeds, before)


def test_finished_run_leaves_no_orphan_tmp_or_checkpoint_files(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "stages=[teacher,scratch]", *FAST]) == 0
    # as if killed during the scratch stage: its results unrecorded, orphans of killed writes
    for name in ("stages.json", "summary.json"):
        record = json.loads((out / name).read_text())
        (record.get("stages", record)).pop("scratch")
        (out / name).write_text(json.dumps(record))
    (out / "summary.json").unlink()
    orphans = [".summary.json.k2x_9abq.tmp", ".scratch.safetensors.0a1b2c3d.tmp",
               "ckpt-scratch-0000-000003.safetensors", "ckpt-scratch-0000-000003.pt"]
    for name in orphans:
        (out / name).write_bytes(b"orphan")
    keep = user_files(out, {"notes.tmp": b"mine", "my.ckpt": b"mine"})
    assert main(["run", "--resume", str(out), "--quiet", "--no-report"]) == 0
    left = {p.name for p in out.iterdir()}
    assert not [n for n in left if n.endswith(".tmp") and n != "notes.tmp"], left
    assert not [n for n in left if n.startswith("ckpt-")], left
    assert "scratch" in json.loads((out / "summary.json").read_text())["stages"]
    for name, data in keep.items():
        assert (out / name).read_bytes() == data


def test_resume_of_a_folder_distill_did_not_write_is_refused(tmp_path, capsys):
    out = tmp_path / "mine"
    files = user_files(out, {"config.yaml": b"name: mine\n", "notes.txt": b"x"})
    refused(["run", "--resume", str(out), "--quiet"], capsys, str(out), "did not write")
    assert_intact(out, files)


# ---------------------------------------------------------------- report / export / helpers


def test_report_and_export_write_only_into_distills_folders(tmp_path, capsys):
    from distill.report import write_report

    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "stages=[teacher,scratch]", *FAST]) == 0
    mine = tmp_path / "copy"  # the same files, in a folder distill did not write
    mine.mkdir()
    for p in out.iterdir():
        if p.name != MARKER and p.is_file():
            (mine / p.name).write_bytes(p.read_bytes())
    (mine / "metrics.jsonl").unlink()  # not an older run folder either
    (mine / "report.md").write_text("# mine\n")
    (mine / "scratch-export.safetensors").write_text("mine")
    before = {p.name: p.read_bytes() for p in mine.iterdir()}
    with pytest.raises(DistillError, match="distill report writes only into"):
        write_report(mine, repeats=1)
    refused(["export", str(mine), "--format", "safetensors", "--stage", "scratch"], capsys,
            str(mine), "distill export writes only into")
    assert_intact(mine, before)
    assert main(["export", str(out), "--format", "safetensors", "--stage", "scratch"]) == 0


def test_older_run_folders_are_recognised_and_sweep_keeps_other_files(tmp_path):
    old = tmp_path / "old"
    user_files(old, {"config.yaml": b"", "metrics.jsonl": b"", "stages.json": b"{}"})
    assert legacy(old, "run") and not owned(old, "run")
    require(old, "run", "distill report")  # accepted, and nothing written
    assert not (old / MARKER).exists()
    assert sweep(old) == []  # unmarked: never swept
    assert claim(old, "run", "--resume", adopt=True) and owned(old, "run")
    (old / ".a.json.abcdefgh.tmp").write_text("")
    (old / "ckpt-notes.txt").write_text("")
    assert sweep(old) == [".a.json.abcdefgh.tmp"] and (old / "ckpt-notes.txt").exists()
    with pytest.raises(DistillError, match="is a distill run folder, not a teacher cache"):
        claim(old, "cache", "cache_dir")
    (tmp_path / "f").write_text("")
    with pytest.raises(DistillError, match="is a file"):
        claim(tmp_path / "f", "run", "--out")


def test_checkpoint_cleanup_deletes_only_checkpoint_files(tmp_path):
    from distill.checkpoint import Checkpointer

    (tmp_path / "ckpt-notes.txt").write_text("mine")
    (tmp_path / "ckpt-distill-0003-000010.pt").write_bytes(b"x")
    (tmp_path / "ckpt-distill-0003-000010.safetensors").write_bytes(b"x")
    Checkpointer.clear(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-notes.txt"]
