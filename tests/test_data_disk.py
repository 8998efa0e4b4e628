"""End to end from files on disk: shipped configs with tiny, self-made datasets."""

from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from distill.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # wherever pytest runs from


def _write_cifar10(root, n=24, seed=0):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in np.arange(n) % 10]}
        (folder / name).write_bytes(pickle.dumps(batch))


def _write_idx(path, array):
    dims = array.shape
    header = struct.pack(">HBB", 0, 0x08, len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _write_mnist(root, n=60):
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", n), ("t10k", n // 2)):
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28)))
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 10)


def _summary(out):
    return json.loads((out / "summary.json").read_text())


def test_cifar10_tutorial_config_runs_with_augmentation(tmp_path):
    _write_cifar10(tmp_path / "data")
    out = tmp_path / "run"
    code = main([
        "run", str(CONFIGS / "cifar10_tutorial.yaml"), f"data.path={tmp_path / 'data'}", "--out", str(out),
        "--quiet", "train.epochs=1", "data.augment=crop_flip", "data.val_fraction=0.2",
        "data.batch_size=32",
    ])
    assert code == 0
    summary = _summary(out)
    assert summary["data"]["num_classes"] == 10
    assert summary["data"]["test"] == 24  # the predefined test_batch
    assert summary["data"]["train"] + summary["data"]["val"] == 120
    assert summary["stages"]["teacher"]["params"] == 1_186_986


def test_mnist_idx_config_runs(tmp_path):
    _write_mnist(tmp_path / "mnist")
    out = tmp_path / "run"
    code = main([
        "run", str(CONFIGS / "mnist_hinton.yaml"), f"data.path={tmp_path / 'mnist'}", "--out", str(out),
        "--quiet", "train.epochs=1", "teacher.kwargs.hidden=[32]", "student.kwargs.hidden=[16]",
        "data.val_fraction=0.2",
    ])
    assert code == 0
    assert _summary(out)["data"]["test"] == 30


@pytest.mark.parametrize("override, expect", [
    ("data.path={missing}", "cifar-10-batches-py"),
    ("data.augment=crop_flip", "needs images"),
])
def test_data_errors_are_clear(tmp_path, capsys, override, expect):
    args = ["run", "--out", str(tmp_path / "run"), "--quiet", "train.epochs=1"]
    if "missing" in override:
        args += ["data.name=cifar10", override.format(missing=tmp_path / "nowhere")]
    else:
        args += [override]  # digits are 8x8 floats, not uint8 images
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and expect in err and "Traceback" not in err
