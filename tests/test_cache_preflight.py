"""Cache settings that can never work are refused before any stage trains (hostile review of
issue 15, item 3): `cache: auto` with fp16 or top-k, `cache: memory|disk` with an augmentation
that cannot be replayed, and a cache.dir that is (or holds) the run folder or is another run's
folder. Each exits 2 with one paragraph, and the run folder holds no trained model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distill.cli import main
from distill.run_folder import claim

FAST = ["train.epochs=1", "teacher.train.epochs=1", "--quiet", "--no-report"]


def images(tmp: Path) -> list[str]:
    """An 8x8 one-channel image dataset (data.augment needs uint8 images) and MLPs for it."""
    rng = np.random.default_rng(0)
    np.savez(tmp / "img.npz", x=rng.integers(0, 256, (60, 1, 8, 8)).astype(np.uint8), y=np.arange(60) % 3)
    return ["data.name=npz", f"data.path={tmp / 'img.npz'}", "teacher.model=mlp", "student.model=mlp"]


def refused(args: list[str], out: Path, capsys) -> str:
    code = main(["run", *args, *FAST, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1, err
    assert not list(out.glob("*.safetensors")), "a stage trained before the refusal"
    return err


@pytest.mark.parametrize("setting", ["cache.topk=3", "cache.dtype=fp16"])
def test_auto_with_an_inexact_storage_is_refused_before_training(setting, tmp_path, capsys):
    err = refused([setting], tmp_path / "r", capsys)
    assert "cache: auto only builds exact caches" in err and "cache: memory or disk" in err, err


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_a_cutout_augmentation_with_a_forced_cache_is_refused_before_training(mode, tmp_path, capsys):
    args = [*images(tmp_path), "data.augment=[{name: cutout, length: 2}]", f"cache={mode}"]
    err = refused(args, tmp_path / "r", capsys)
    assert f"cache: {mode} cannot be used with its augmentation" in err and "cache: off" in err, err


def test_a_cutout_augmentation_with_cache_auto_trains_uncached(tmp_path):
    args = [*images(tmp_path), "data.augment=[{name: cutout, length: 2}]", "stages=[teacher,distill]"]
    assert main(["run", *args, *FAST, "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "distill.safetensors").is_file()


@pytest.mark.parametrize("where", ["same", "parent"])
def test_a_cache_dir_that_is_or_holds_the_run_folder_is_refused_before_training(where, tmp_path, capsys):
    out = tmp_path / "r" if where == "same" else tmp_path / "c" / "r"
    cache_dir = out if where == "same" else out.parent
    err = refused(["cache=disk", f"cache.dir={cache_dir}"], out, capsys)
    assert ("is this run's folder" if where == "same" else "holds this run's folder") in err, err
    assert "Leave cache.dir unset" in err and "teacher_cache" in err, err
    assert not out.exists()


def test_a_cache_dir_that_is_another_run_folder_is_refused_before_training(tmp_path, capsys):
    claim(tmp_path / "other", "run", "--out")
    err = refused(["cache=disk", f"cache.dir={tmp_path / 'other'}"], tmp_path / "r", capsys)
    assert "is a distill run folder, not a teacher cache" in err, err
    assert not (tmp_path / "r").exists()
