"""`distill predict RUN_OR_EXPORT FILES...`: top-k class names of raw files, from an export folder
or a run folder (exported to a temporary folder first); clear errors, never a traceback."""

from __future__ import annotations

import json
import re
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from distill.cli import main
from distill.errors import DistillError
from distill.predict import Options, open_export, predict, predict_with
from test_export_raw import CLASSES, FOLDER_RUN, _csv, png_folder  # the same PNG folder and run

pytest.importorskip("onnxruntime")

CSV_RUN = ["--quiet", "--no-report", "data.name=csv", "train.epochs=3", "teacher.model=mlp", "teacher.kwargs.hidden=[16]",
           "student.model=mlp", "student.kwargs.hidden=[8]", "stages=[teacher,distill]"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(run folder, its export folder, the image folder)."""
    base = tmp_path_factory.mktemp("predict")
    images = png_folder(base / "images")
    run = base / "run"
    assert main(["run", "--out", str(run), f"data.path={images}", *FOLDER_RUN]) == 0
    assert main(["export", str(run), "--format", "onnx", "--quantize", "int8"]) == 0
    return run, run / "export", images


def error(argv, capsys, *parts) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1, err
    for part in parts:
        assert part in err, err
    return err


def test_predict_prints_the_class_names(exported, capsys):
    run, folder, images = exported
    files = [str(images / c / "00.png") for c in CLASSES]
    capsys.readouterr()
    assert main(["predict", str(folder), *files, "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"\s([12])\s+(cat|dog|frog)\s+(\d+\.\d\d)\s*$", out, re.M)  # rank, class, prob %
    assert [r[0] for r in rows] == ["1", "2"] * len(files) and "00.png" in out
    assert main(["predict", str(folder), *files, "--json", "--top-k", "3"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["input"] for r in lines] == files
    for r in lines:
        assert sorted(c["label"] for c in r["top"]) == sorted(CLASSES)
        assert sum(c["prob"] for c in r["top"]) == pytest.approx(1.0)
        assert r["top"][0]["prob"] >= r["top"][1]["prob"] >= r["top"][2]["prob"]
    assert main(["predict", str(folder), *files, "--json", "--int8", "--top-k", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_a_run_folder_predicts_like_its_export_and_writes_nothing_into_it(exported, monkeypatch):
    run, folder, images = exported
    files = sorted((images / "dog").iterdir())[:4]
    before = sorted(p.name for p in run.iterdir())
    from_export = predict(folder, files, top_k=3)
    from_run = predict(run, files, top_k=3)
    for a, b in zip(from_export, from_run, strict=True):
        assert [c["label"] for c in a["top"]] == [c["label"] for c in b["top"]]
        np.testing.assert_allclose([c["prob"] for c in a["top"]], [c["prob"] for c in b["top"]], atol=1e-5)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # without the optional extra: TorchScript
    from_torch = predict(run, files, top_k=3)
    np.testing.assert_allclose([c["prob"] for r in from_torch for c in r["top"]],
                               [c["prob"] for r in from_export for c in r["top"]], atol=1e-5)
    assert sorted(p.name for p in run.iterdir()) == before


def test_an_onnx_export_without_onnxruntime_says_what_to_do(exported, monkeypatch, capsys):
    _, folder, images = exported
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    error(["predict", str(folder), str(images / "cat" / "00.png")], capsys, "pip install 'distill[export]'",
          "--format torchscript")


def test_npz_images_and_the_size_policy(exported, tmp_path, capsys):
    _, folder, images = exported
    model = open_export(folder)
    png = images / "frog" / "03.png"
    # data.size=8, data.crop=8 by hand: the shorter side 10 -> 8 (12 -> 10, bilinear), the centre 8x8
    resized = Image.open(png).convert("RGB").resize((10, 8), Image.Resampling.BILINEAR)
    x = np.asarray(resized.crop((1, 0, 9, 8))).transpose(2, 0, 1)
    np.savez(tmp_path / "one.npz", x=x)
    same = predict_with(model, [png, tmp_path / "one.npz"], 3)
    np.testing.assert_allclose([c["prob"] for c in same[0]["top"]], [c["prob"] for c in same[1]["top"]], atol=1e-6)
    fixed = tmp_path / "fixed"  # an export whose run resized nothing: the model takes 8x8 images only
    shutil.copytree(folder, fixed)
    pre = json.loads((fixed / "preprocess.json").read_text())
    pre["image"].update(size=None, crop=None)
    (fixed / "preprocess.json").write_text(json.dumps(pre))
    error(["predict", str(fixed), str(png)], capsys, f"Image '{png}' is 10x12", "takes 8x8", "--resize")
    assert len(predict_with(open_export(fixed), [png], 1, Options(resize=True))) == 1


def test_bad_inputs_are_clear_errors(exported, tmp_path, capsys):
    run, folder, images = exported
    png = str(images / "cat" / "00.png")
    error(["predict", str(folder), str(tmp_path / "nope.png")], capsys, "nope.png' does not exist")
    error(["predict", str(run), str(tmp_path / "nope.png")], capsys, "does not exist")  # before any export
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    error(["predict", str(folder), str(broken)], capsys, "Could not read image", "broken.png")
    (tmp_path / "notes.md").write_text("hi")
    error(["predict", str(folder), str(tmp_path / "notes.md")], capsys, "is not an image file")
    error(["predict", str(folder)], capsys, "Give the files to predict")
    error(["predict", str(tmp_path), png], capsys, "neither a run folder", "nor an export folder")
    error(["predict", str(tmp_path / "gone"), png], capsys, "does not exist")
    error(["predict", str(run), png, "--int8"], capsys, "--quantize int8")
    lm = tmp_path / "lm"  # a language-model run: nothing to predict classes with
    lm.mkdir()
    (lm / "config.yaml").write_text("task: language_model\n")
    error(["predict", str(lm), png], capsys, "task=language_model run", "ONNX or TorchScript")


def test_a_damaged_export_folder_is_a_clear_error(exported, tmp_path, capsys):
    _, folder, images = exported
    png = str(images / "cat" / "00.png")
    for name, damage in (("model.onnx", b"\x08\x07 definitely not protobuf"), ("model.int8.onnx", b""),
                         ("preprocess.json", b"{"), ("labels.json", b'["one"]')):
        copy = tmp_path / name
        shutil.copytree(folder, copy)
        (copy / name).write_bytes(damage)
        args = ["predict", str(copy), png, *(["--int8"] if "int8" in name else [])]
        err = error(args, capsys)
        assert name in err and "export" in err, err
    ts = tmp_path / "ts"
    assert main(["export", str(exported[0]), "--format", "torchscript", "--out", str(ts)]) == 0
    (ts / "model.torchscript.pt").write_bytes(b"PK\x03\x04 truncated")
    error(["predict", str(ts), png], capsys, "model.torchscript.pt", "corrupt")


def test_csv_and_npz_features(tmp_path, capsys):
    data = _csv(tmp_path / "train.csv")
    run = tmp_path / "run"
    assert main(["run", "--out", str(run), f"data.path={data}", *CSV_RUN]) == 0
    out = tmp_path / "e"
    assert main(["export", str(run), "--format", "torchscript", "--out", str(out)]) == 0
    model = open_export(out)
    assert model.preprocess["features"]["columns"] == ["a", "b", "c"]
    (tmp_path / "new.csv").write_text("a,b,c\n1.0,0.5,-1\n0.1,2,1.5\n")  # no label column: fine
    got = predict_with(model, [tmp_path / "new.csv", data], 3)
    assert [g["input"] for g in got[:2]] == [f"{tmp_path / 'new.csv'}:row 1", f"{tmp_path / 'new.csv'}:row 2"]
    assert len(got) == 2 + 60 and {c["label"] for c in got[0]["top"]} == {"0", "1", "2"}
    np.savez(tmp_path / "x.npz", x=np.array([[1.0, 0.5, -1], [0.1, 2, 1.5]], dtype=np.float64))
    via_npz = predict_with(model, [tmp_path / "x.npz"], 3)
    for a, b in zip(via_npz, got[:2], strict=True):  # the same rows (a batch of another size: ~1e-9 apart)
        assert [c["label"] for c in a["top"]] == [c["label"] for c in b["top"]]
        np.testing.assert_allclose([c["prob"] for c in a["top"]], [c["prob"] for c in b["top"]], atol=1e-6)
    (tmp_path / "swapped.csv").write_text("b,a,c\n1,2,3\n")
    error(["predict", str(out), str(tmp_path / "swapped.csv")], capsys, "feature columns b, a, c", "a, b, c")
    (tmp_path / "bad.csv").write_text("a,b,c\n1,x,3\n")
    error(["predict", str(out), str(tmp_path / "bad.csv")], capsys, "'x' is not a number")
    np.savez(tmp_path / "wrong.npz", x=np.zeros((2, 5)))
    error(["predict", str(out), str(tmp_path / "wrong.npz")], capsys, "shape (2, 5)", "(N, 3)")


def test_no_samples_and_wrong_argument_types_are_clear_errors(exported, tmp_path):
    from distill.predict import Options, predict

    run, folder, images = exported
    empty = tmp_path / "empty.npz"
    np.savez(empty, x=np.zeros((0, 3, 8, 8), np.uint8))
    with pytest.raises(DistillError, match="no samples"):
        predict(folder, [empty])
    png = images / CLASSES[0] / "00.png"
    for kwargs, message in (({"top_k": "3"}, "top_k"), ({"top_k": 0}, "top_k"),
                            ({"opts": Options(texts="one text")}, "list of strings")):
        with pytest.raises(DistillError, match=message):
            predict(folder, [png], **kwargs)
    with pytest.raises(DistillError, match="list of paths"):
        predict(folder, str(png))


def test_a_16_bit_png_is_scaled_not_clipped(tmp_path):
    from distill.data.image_folder import decode_image

    a = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "i16.png")
    x = decode_image(tmp_path / "i16.png")
    assert x.shape == (3, 8, 8) and x[0, 0, 0] == 0 and x[0, 7, 7] == round(63000 * 255 / 65535)


def test_eval_on_a_folder_of_some_classes_keeps_the_runs_class_indices(exported, tmp_path, capsys):
    from distill.classifier_run import rebuild
    from distill.cli import main as cli

    run, _, images = exported
    some = tmp_path / "some"
    for c in CLASSES[1:]:  # dog and frog only: alone they would be classes 0 and 1
        shutil.copytree(images / c, some / c)
    _, data = rebuild(run, [f"data.path={some}"])
    assert data.num_classes == 3 and set(data.test.y.tolist()) == {1, 2}
    assert cli(["eval", str(run), "--data", str(some)]) == 0
    (some / "frog").rename(some / "toad")
    assert cli(["eval", str(run), "--data", str(some)]) == 2
    assert "no output for: toad" in capsys.readouterr().err


def test_integer_arrays_in_0_255_are_images_like_in_training(exported, tmp_path):
    from distill.predict import predict

    _, folder, images = exported
    x = np.stack([np.asarray(Image.open(images / c / "00.png").convert("RGB").resize((8, 8))).transpose(2, 0, 1)
                  for c in CLASSES])
    np.savez(tmp_path / "u8.npz", x=x.astype(np.uint8))
    np.savez(tmp_path / "i64.npz", x=x.astype(np.int64))
    np.savez(tmp_path / "big.npz", x=x.astype(np.int64) + 300)
    assert predict(folder, [tmp_path / "i64.npz"]) == [
        {**r, "input": r["input"].replace("u8", "i64")} for r in predict(folder, [tmp_path / "u8.npz"])]
    with pytest.raises(DistillError, match="0..255"):
        predict(folder, [tmp_path / "big.npz"])
