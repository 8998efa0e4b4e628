"""Hostile inputs (issue 14, item 7): values that pass the schema's types but break a run,
data that would train silently wrong, and files of the wrong kind. Each case exits 2 with one
paragraph naming the fix and no traceback, before anything trains (README, "Bad input")."""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.cli import main

FAST = ["--quiet", "train.epochs=1", "teacher.model=mlp", "teacher.kwargs.hidden=[16]"]
RNG = np.random.default_rng(0)
X = RNG.random((60, 4)).astype(np.float32)
Y = np.arange(60) % 3
IMAGES = RNG.integers(0, 256, (60, 1, 8, 8))


def _with(x, at, value):
    x = x.copy()
    x[at] = value
    return x


def npz(**arrays):
    """A builder: tmp -> data.name=npz data.path=<a file holding `arrays`>."""
    def build(tmp: Path) -> list[str]:
        np.savez(tmp / "d.npz", **arrays)
        return ["data.name=npz", f"data.path={tmp / 'd.npz'}"]
    return build


def file(name: str, content: bytes | str, *, kind: str = "npz", key: str = "data.path"):
    """A builder: tmp -> data.name=<kind> <key>=<a file `name` holding `content`>."""
    def build(tmp: Path) -> list[str]:
        path = tmp / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        extra = [] if key == "data.path" else [*npz(x=X, y=Y)(tmp)]
        return [*(extra or [f"data.name={kind}"]), f"{key}={path}"]
    return build


def _npy() -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, X)
    return buf.getvalue()


def _npz_bytes(**arrays) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _zip_without_arrays() -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("notes.txt", "hello")
    return buf.getvalue()


def mnist_truncated_gz(tmp: Path) -> list[str]:
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (tmp / f"{stem}.gz").write_bytes(gzip.compress(b"\0\0\x08\x03" + bytes(64))[:20])
    return ["data.name=mnist", f"data.path={tmp}"]


def const(*args):
    return lambda tmp: list(args)


NAN_CSV = "a,b,label\n" + "".join(f"{i},{'nan' if i == 3 else i},{i % 2}\n" for i in range(40))

# (case id, builder tmp -> overrides, substring the message must contain)
VALUES = [
    ("loss weight NaN", const("loss.kd.weight=.nan"), "loss.kd.weight must be a finite number"),
    ("loss weight Inf", const("loss.kd.weight=inf"), "loss.kd.weight must be a finite number"),
    ("T = Inf", const("loss.kd.T=inf"), "loss.kd.T must be a finite number"),
    ("T = NaN", const("loss.kd.T=.nan"), "loss.kd.T must be a finite number"),
    ("T underflows (1e-40)", const("loss.kd.T=1e-40"), "Use T >= 0.001"),
    ("lr = NaN", const("train.lr=.nan"), "'train.lr': input should be a finite number"),
    ("lr = Inf", const("train.lr=inf"), "'train.lr': input should be a finite number"),
    ("weight_decay = Inf", const("train.weight_decay=inf"), "'train.weight_decay': input should be a finite"),
    ("grad_clip = Inf", const("train.grad_clip=.inf"), "'train.grad_clip': input should be a finite"),
    ("seed past 64 bits", const(f"seed={2**70}"), "'seed': input should be less than"),
    ("negative seed", const("seed=-1"), "'seed': input should be greater than or equal to 0"),
    ("split_seed past 32 bits", const(f"data.split_seed={2**40}"), "'data.split_seed': input should be less"),
    ("negative width", const("student.kwargs.hidden=[-1]"), "student.kwargs.hidden=[-1] has a value below 1"),
    ("zero width", const("student.kwargs.hidden=[0]"), "student.kwargs.hidden=[0] has a value below 1"),
    ("width too large for memory", const(f"student.kwargs.hidden=[{10**13}]"), "does not fit in memory"),
    ("no stages", const("stages=[]"), "'stages': list should have at least 1 item"),
    ("repeated stage", const("stages=[teacher,teacher]"), "stages lists teacher more than once"),
]
DATA = [
    ("NaN in x", npz(x=_with(X, (5, 1), np.nan), y=Y), "1 non-finite value(s) (NaN or Inf) in 1 sample(s)"),
    ("Inf in x_test", npz(x=X, y=Y, x_test=_with(X, (7, 0), np.inf), y_test=Y), "The test inputs (x_test)"),
    ("NaN in csv", file("d.csv", NAN_CSV, kind="csv"), "line 5, column 'b': 'nan' is not a finite number"),
    ("NaN in unlabelled", file("u.npz", _npz_bytes(x=_with(X, (2, 2), np.nan)), key="data.unlabelled_path"),
     "The unlabelled inputs"),
    ("uint16 images past 255", npz(x=IMAGES.astype(np.uint16) * 200, y=Y), "images are read as 8-bit"),
    ("string inputs", npz(x=np.array([["a"] * 4] * 60), y=Y), "they must be numbers"),
    ("complex inputs", npz(x=X.astype(np.complex64), y=Y), "they must be numbers"),
    ("one class only", npz(x=X, y=np.zeros(60, np.int64)), "only one class (0)"),
    ("labels {3, 7}", npz(x=X, y=np.where(Y == 0, 3, 7)), "class(es) 0, 1, 2, 4, 5, 6 never occur"),
    ("no features (N, 0)", npz(x=np.zeros((60, 0), np.float32), y=Y), "no features per sample"),
    ("N = 1", npz(x=X[:1], y=Y[:1]), "only one class"),
]
WRONG_FILES = [
    (".npy for data.name=npz", file("d.npy", _npy()), "is a single .npy array, not an .npz archive"),
    ("truncated .npz", file("d.npz", _npz_bytes(x=X, y=Y)[:300]), "may be corrupt, truncated"),
    ("csv for data.name=npz", file("d.npz", NAN_CSV), "Could not read"),
    ("unlabelled .npy", file("u.npy", _npy(), key="data.unlabelled_path"), "is a single .npy array"),
    ("unlabelled csv", file("u.csv", NAN_CSV, key="data.unlabelled_path"), "Could not read"),
    ("unlabelled truncated", file("u.npz", _npz_bytes(x=X)[:200], key="data.unlabelled_path"),
     "may be corrupt, truncated"),
    ("unlabelled strings", file("u.npz", _npz_bytes(x=np.array([["a"] * 4] * 3)), key="data.unlabelled_path"),
     "they must be numbers"),
]
CASES = VALUES + DATA + WRONG_FILES


@pytest.mark.parametrize("case, build, expect", CASES, ids=[c[0] for c in CASES])
def test_hostile_input(case, build, expect, tmp_path, capsys):
    code = main(["run", "--out", str(tmp_path / "out"), *FAST, *build(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and expect in err, err
    assert "Traceback" not in err and err.count("\n") == 1  # one paragraph


def test_integer_images_in_8_bit_range_are_images(tmp_path):
    """int64 images with values 0..255 are read as uint8 images (normalized per channel,
    augmentable), not as 64 unrelated features."""
    from distill.config import DataConfig
    from distill.data import build_data

    np.savez(tmp_path / "d.npz", x=IMAGES.astype(np.int64), y=Y)
    data = build_data(DataConfig(name="npz", path=str(tmp_path / "d.npz"), augment="flip"))
    assert data.teacher_train.x.dtype == torch.uint8 and data.in_shape == (1, 8, 8)


def test_eval_data_on_a_digits_run(tmp_path, capsys):
    """--data on a run of the built-in digits would be ignored: eval says so, and how to give
    the data's kind."""
    run = tmp_path / "run"
    assert main(["run", "--out", str(run), *FAST, "stages=[teacher]"]) == 0
    np.savez(tmp_path / "other.npz", x=X, y=Y)
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(tmp_path / "other.npz")]) == 2
    err = capsys.readouterr().err
    assert "built-in digits" in err and "--data" in err and "data.name=npz" in err, err
    assert "Traceback" not in err and err.count("\n") == 1
