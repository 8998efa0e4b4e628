"""The bad-input catalogue (README): every case exits 2 with one message naming the fix,
prints no traceback, and leaves what the output folder already held intact."""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import save_file

from distill.cli import main
from distill.run_folder import claim

FAST = ["--quiet", "train.epochs=1", "teacher.model=mlp", "teacher.kwargs.hidden=[16]"]


def _npz(tmp: Path, x, y) -> str:
    np.savez(tmp / "d.npz", x=x, y=y)
    return str(tmp / "d.npz")


def _image_folder(tmp: Path) -> str:
    from PIL import Image

    for cls in ("a", "b"):
        (tmp / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp / "imgs" / cls / f"{i}.png")
    (tmp / "imgs" / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    return str(tmp / "imgs")


def _user_models(tmp: Path, monkeypatch) -> None:
    (tmp / "my_models.py").write_text(
        "from torch import nn\n"
        "def three_classes(in_shape, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))\n"
        "def wants_784(in_shape, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(784, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp))
    sys.modules.pop("my_models", None)


def _teacher_file(tmp: Path, hidden: int, name="t.safetensors", cut=0) -> str:
    from distill.models import create_model

    model = create_model("mlp", 10, (1, 8, 8), hidden=[hidden])
    path = tmp / name
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    if cut:
        path.write_bytes(path.read_bytes()[:-cut])
    return str(path)


# (case id, argument builder (tmp, monkeypatch) -> args, substring the message must contain)
CASES = [
    # config
    ("unknown key", lambda t, m: ["train.epoch=3"], "Did you mean 'epochs'"),
    ("wrong type", lambda t, m: ["train.epochs=abc"], "train.epochs"),
    ("epochs <= 0", lambda t, m: ["train.epochs=0"], "greater than 0"),
    ("T <= 0", lambda t, m: ["loss.kd.T=0"], "T must be > 0"),
    ("all weights zero", lambda t, m: ["loss.kd.weight=0", "loss.ce.weight=0"], "All loss weights are zero"),
    ("unknown loss", lambda t, m: ["loss.kdd.weight=1"], "Did you mean 'kd'"),
    ("unknown optimizer", lambda t, m: ["train.optimizer=rmsprop"], "train.optimizer"),
    ("malformed override", lambda t, m: ["train.epochs"], "dotted.key=value"),
    ("missing config file", lambda t, m: [str(t / "nope.yaml")], "does not exist"),
    # data
    ("missing data path", lambda t, m: ["data.name=cifar10", f"data.path={t / 'nowhere'}"], "cifar-10-batches-py"),
    ("empty dataset", lambda t, m: ["data.name=npz", f"data.path={_npz(t, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))}"], "empty"),
    ("corrupt image", lambda t, m: ["data.name=folder", f"data.path={_image_folder(t)}"], "broken.png"),
    ("label out of range", lambda t, m: ["data.name=npz", f"data.path={_npz(t, np.random.rand(40, 4).astype(np.float32), np.r_[np.arange(39) % 3, -3])}"], "-3"),
    ("input shape the model cannot take", lambda t, m: (_user_models(t, m), ["student.model=my_models:wants_784"])[1], "cannot take this data's inputs"),
    # models
    ("class-count mismatch", lambda t, m: (_user_models(t, m), ["student.model=my_models:three_classes"])[1], "outputs 3 classes but the data has 10"),
    ("unknown model name", lambda t, m: ["student.model=resnet9"], "Unknown model 'resnet9'"),
    ("hook path not found", lambda t, m: ["loss.fitnet.student=layer9", "loss.fitnet.teacher=hidden.0"], "has no module 'layer9'"),
    ("bad import path", lambda t, m: ["student.model=no_such_pkg.mod:build"], "package.module:function"),
    # checkpoints
    ("corrupt checkpoint", lambda t, m: [f"teacher.checkpoint={(t / 'c.safetensors').write_bytes(b'garbage') and t / 'c.safetensors'}", "teacher.model=mlp", "teacher.kwargs.hidden=[16]"], "corrupt or truncated"),
    ("truncated checkpoint", lambda t, m: [f"teacher.checkpoint={_teacher_file(t, 16, cut=9)}", "teacher.model=mlp", "teacher.kwargs.hidden=[16]"], "corrupt or truncated"),
    ("wrong architecture", lambda t, m: [f"teacher.checkpoint={_teacher_file(t, 24)}", "teacher.model=mlp", "teacher.kwargs.hidden=[16]"], "hidden.0.0.weight: file (24, 64) vs model (16, 64)"),
    # runtime
    ("NaN loss", lambda t, m: ["train.lr=1e30", "train.optimizer=sgd", "train.momentum=0"], "non-finite"),
]


@pytest.mark.parametrize("case, build, expect", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, build, expect, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    claim(out, "run", "--out")  # a folder distill made (a folder of the user's is refused first)
    keep = out / "earlier.txt"
    keep.write_text("written before")
    args = build(tmp_path, monkeypatch)
    code = main(["run", *[a for a in args if a.endswith(".yaml")], "--out", str(out), *FAST,
                 *[a for a in args if not a.endswith(".yaml")]])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and expect in err, err
    assert "Traceback" not in err and err.count("\n") == 1  # one paragraph
    assert keep.read_text() == "written before"


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    assert main(["run", "--out", str(blocker / "run"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "Cannot write the run folder" in err and "Traceback" not in err
    assert blocker.read_text() == "a file, not a folder"


def test_full_disk_mid_run_keeps_earlier_files(tmp_path, monkeypatch, capsys):
    import distill.run_files

    out = tmp_path / "run"
    real = distill.run_files.save_weights

    def full(module, path):
        if "scratch" in Path(path).name:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(module, path)

    monkeypatch.setattr(distill.run_files, "save_weights", full)
    assert main(["run", "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err
    from safetensors.torch import load_file

    assert load_file(str(out / "teacher.safetensors"))  # written before the failure, intact
    assert (out / "config.yaml").exists()
