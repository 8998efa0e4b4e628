"""`distill export --format onnx|torchscript` writes an export folder whose model takes RAW inputs
(uint8 images, raw features) and normalizes inside the graph exactly as distill's loaders do;
labels.json and preprocess.json say the rest; `--quantize int8` adds a measured int8 model
(issue 17, parts 4 and 5)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from distill.cli import main
from distill.config import load_config
from distill.data import build_data, raw_splits
from distill.data.source import open_source
from distill.data.splits import make_splits
from distill.export import classifier_bundle
from distill.export import export as export_run
from distill.raw_inputs import as_raw, preprocess_record, raw_input_model
from distill.report import write_report
from distill.run_folder import MARKER
from distill.tasks.classification import ClassificationTask

pytest.importorskip("onnxruntime")

CLASSES = ("cat", "dog", "frog")
FOLDER_RUN = ["--quiet", "--no-report", "data.name=folder", "data.size=8", "data.crop=8", "train.epochs=8",
              "train.lr=0.01", "teacher.model=cnn", "teacher.kwargs.channels=[8]", "student.model=cnn",
              "student.kwargs.channels=[8]", "data.batch_size=16", "data.label_fraction=1.0"]
DIGITS_RUN = ["--quiet", "--no-report", "train.epochs=2", "teacher.model=mlp", "teacher.kwargs.hidden=[32]", "student.model=mlp",
              "student.kwargs.hidden=[16]", "stages=[teacher,distill]"]


def png_folder(root, per_class: int = 20, hw=(10, 12)):
    """Class-per-subfolder RGB PNGs of another size than the run's 8x8 (resized, then cropped);
    the class shows in the red channel."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
            a[..., 0] = np.clip(a[..., 0] // 3 + 80 * c, 0, 255)
            Image.fromarray(a).save(root / name / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def png_run(tmp_path_factory):
    """(run folder, image folder) of a small cnn run on PNGs."""
    base = tmp_path_factory.mktemp("pngs")
    images = png_folder(base / "images")
    run = base / "run"
    assert main(["run", "--out", str(run), f"data.path={images}", *FOLDER_RUN]) == 0
    return run, images


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("digits") / "run"
    assert main(["run", "--out", str(run), *DIGITS_RUN]) == 0
    return run


def split_files(run):
    """The test split's image files, in the test loader's order."""
    cfg = load_config(run / "config.yaml")
    test = make_splits(open_source(cfg.data), cfg.data, len(CLASSES)).test
    return [test.base.files[i] for i in test.rows]


def summary(run) -> dict:
    return json.loads((run / "summary.json").read_text())


# ---------------------------------------------------------------- the record is exact


def _csv(path):
    rng = np.random.default_rng(1)
    rows = ["a,label,b,c"] + [f"{rng.normal() + y:.4f},{y},{rng.normal() * 3:.4f},{rng.normal() - y:.4f}"
                              for y in np.arange(60) % 3]
    path.write_text("\n".join(rows) + "\n")
    return path


SOURCES = {  # data.name -> the overrides of a small dataset of that kind (tmp: a folder to write it in)
    "folder": lambda tmp, images: ["data.name=folder", f"data.path={png_folder(tmp / 'i', 8)}", "data.size=8",
                                   "data.crop=8"],
    "folder-stream": lambda tmp, images: ["data.name=folder", f"data.path={png_folder(tmp / 'i', 8)}",
                                          "data.loader=stream", "data.workers=0"],
    "npz-uint8": lambda tmp, images: ["data.name=npz", f"data.path={images}"],
    "digits": lambda tmp, images: ["data.name=digits"],
    "csv": lambda tmp, images: ["data.name=csv", f"data.path={_csv(tmp / 't.csv')}"],
}


@pytest.mark.parametrize("source", SOURCES)
def test_the_graph_normalizes_raw_rows_exactly_as_the_loader(source, tmp_path, images):
    cfg = load_config(overrides=SOURCES[source](tmp_path, images)).data
    data = build_data(cfg)
    record = preprocess_record(cfg, data)
    raw = raw_splits(cfg).test
    normalize = raw_input_model(nn.Identity(), record)  # the graph's input part alone
    x = torch.from_numpy(as_raw(raw.take(np.arange(len(raw))), record))
    assert x.dtype == (torch.uint8 if record["kind"] == "image" else torch.float32)
    loader = torch.cat([b.inputs for b in data.test])
    assert torch.equal(normalize(x), loader)  # bit for bit: the same float32 ops in the same order
    if source == "csv":
        assert record["features"]["columns"] == ["a", "b", "c"]


def test_token_id_data_get_no_classifier_record():
    from types import SimpleNamespace

    data = SimpleNamespace(stats={"kind": "text", "max_length": 16}, in_shape=(16,), num_classes=2)
    assert preprocess_record(load_config().data, data) is None  # the text task records its own


def test_summary_records_class_names_and_the_preprocessing(png_run, tmp_path):
    run, images = png_run
    data = summary(run)["data"]
    assert data["class_names"] == list(CLASSES)
    pre = data["preprocess"]
    assert pre["kind"] == "image" and pre["num_classes"] == 3
    expected = {"channels": 3, "height": 8, "width": 8, "size": 8, "crop": 8, "channel_order": "RGB", "mode": "RGB",
                "layout": "NCHW"}
    assert {k: pre["image"][k] for k in expected} == expected
    assert pre["normalize"]["mean"] == data["normalization"]["mean"]
    assert pre["normalize"]["scale"] == float(np.float32(1 / 255))
    result = export_run(run, "onnx", tmp_path / "e")
    written = json.loads((tmp_path / "e" / "preprocess.json").read_text())
    assert {k: written[k] for k in pre} == pre  # rebuilt at export time: the same record
    assert written["inputs"] == [{"name": "input", "dtype": "uint8", "shape": ["batch", 3, 8, 8]}]
    assert set(result) >= {"path", "dir", "labels", "preprocess", "max_abs_diff"}


# ---------------------------------------------------------------- raw PNGs in, the run's numbers out


def test_onnx_on_raw_pngs_matches_the_student_and_the_runs_accuracy(png_run, tmp_path):
    from distill.predict import open_export, predict_with

    run, images = png_run
    assert main(["export", str(run), "--format", "onnx"]) == 0
    folder = run / "export"
    assert sorted(p.name for p in folder.iterdir()) == sorted([MARKER, "model.onnx", "labels.json", "preprocess.json"])
    assert json.loads((folder / "labels.json").read_text()) == sorted(p.name for p in images.iterdir())
    files = split_files(run)
    got = predict_with(open_export(folder), files, top_k=3)
    probs = np.array([[c["prob"] for c in sorted(r["top"], key=lambda c: c["index"])] for r in got])
    model, data = ClassificationTask(load_config(run / "config.yaml")).load_run(run, "distill")
    with torch.no_grad():  # the torch student on distill's own normalized inputs of the same files
        expected = torch.cat([model(b.inputs) for b in data.test]).softmax(1).numpy()
    np.testing.assert_array_equal(probs.argmax(1), expected.argmax(1))
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    labels = np.array([CLASSES.index(f.split("/")[-2]) for f in files])
    acc = 100.0 * (probs.argmax(1) == labels).mean()
    assert acc == pytest.approx(summary(run)["stages"]["distill"]["test_acc"])
    assert acc > 50  # it learned something: 3 classes


def test_torchscript_takes_raw_images_too(png_run, tmp_path):
    run, _ = png_run
    out = tmp_path / "ts"
    assert main(["export", str(run), "--format", "torchscript", "--out", str(out), "--stage", "scratch"]) == 0
    module = torch.jit.load(str(out / "model.torchscript.pt"))
    bundle = classifier_bundle(run, "scratch")
    x = bundle.example["input"]
    assert x.dtype == torch.uint8
    torch.testing.assert_close(module(x), bundle.module(x), atol=1e-5, rtol=0)
    assert json.loads((out / "preprocess.json").read_text())["stage"] == "scratch"


def test_int8_is_measured_recorded_and_reported(png_run, capsys):
    from distill.predict import open_export, predict_with

    run, _ = png_run
    assert main(["export", str(run), "--format", "onnx", "--quantize", "int8"]) == 0
    assert "model.int8.onnx" in capsys.readouterr().out
    folder = run / "export"
    q = json.loads((folder / "quantization.json").read_text())
    assert q["method"] == "static" and q["calibration"]["samples"] > 0  # a conv net: calibrated QDQ
    assert q["fp32"]["acc"] == pytest.approx(summary(run)["stages"]["distill"]["test_acc"])
    assert 0 <= q["int8"]["acc"] <= 100 and q["int8"]["size_bytes"] == (folder / "model.int8.onnx").stat().st_size
    assert q["fp32"]["latency_ms"] > 0 and q["int8"]["latency_ms"] > 0 and q["latency"]["threads"] == 1
    files = split_files(run)
    fp32 = [r["top"][0]["index"] for r in predict_with(open_export(folder), files, 1)]
    int8 = [r["top"][0]["index"] for r in predict_with(open_export(folder, int8=True), files, 1)]
    agree = np.mean(np.array(fp32) == np.array(int8))
    assert agree == pytest.approx(q["agreement"] / 100) and agree >= 0.5  # mostly: int8 may flip a few
    report = write_report(run, repeats=1).read_text()
    assert "student, ONNX int8" in report and "quantization.json" in report
    assert main(["export", str(run), "--format", "onnx"]) == 0  # without --quantize: the int8 files go
    assert not (folder / "model.int8.onnx").exists() and not (folder / "quantization.json").exists()


def test_a_features_run_round_trips_and_quantizes_dynamically(digits_run, tmp_path):
    from distill.predict import open_export, predict_with

    result = export_run(digits_run, "onnx", tmp_path / "e", quantize="int8")
    pre = json.loads((tmp_path / "e" / "preprocess.json").read_text())
    assert pre["kind"] == "features" and pre["features"]["shape"] == [1, 8, 8]
    assert pre["inputs"][0]["dtype"] == "float32" and len(pre["normalize"]["mean"]) == 64
    assert json.loads((tmp_path / "e" / "labels.json").read_text()) == [str(i) for i in range(10)]
    assert result["int8"]["method"] == "dynamic"  # an MLP: linear layers only
    assert result["int8"]["fp32"]["acc"] == pytest.approx(summary(digits_run)["stages"]["distill"]["test_acc"])
    cfg = load_config(digits_run / "config.yaml")
    raw = raw_splits(cfg.data).test
    np.savez(tmp_path / "raw.npz", x=raw.take(np.arange(len(raw))))  # raw 0..16 pixel values, not standardized
    got = predict_with(open_export(tmp_path / "e"), [tmp_path / "raw.npz"], 1)
    acc = 100.0 * np.mean([r["top"][0]["index"] == y for r, y in zip(got, raw.labels, strict=True)])
    assert acc == pytest.approx(summary(digits_run)["stages"]["distill"]["test_acc"])


def test_an_old_run_folder_without_the_new_fields_still_exports(png_run, tmp_path):
    run, _ = png_run
    old = tmp_path / "old"
    shutil.copytree(run, old, ignore=shutil.ignore_patterns("export*", "report*"))
    s = summary(old)
    for key in ("class_names", "preprocess"):
        del s["data"][key]
    (old / "summary.json").write_text(json.dumps(s))
    (old / MARKER).unlink()  # written before markers, too
    assert main(["export", str(old), "--format", "onnx"]) == 0
    new = json.loads((old / "export" / "preprocess.json").read_text())
    assert {k: new[k] for k in summary(run)["data"]["preprocess"]} == summary(run)["data"]["preprocess"]
    assert json.loads((old / "export" / "labels.json").read_text()) == list(CLASSES)


# ---------------------------------------------------------------- hostile


def test_out_at_a_users_folder_is_refused_and_left_untouched(png_run, tmp_path, capsys):
    run, _ = png_run
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.onnx").write_bytes(b"my own model")
    (mine / "notes.txt").write_text("keep me")
    before = {p.name: p.read_bytes() for p in mine.iterdir()}
    for fmt in ("onnx", "torchscript"):
        assert main(["export", str(run), "--format", fmt, "--out", str(mine)]) == 2
        err = capsys.readouterr().err
        assert "holds files distill did not write" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == before
    assert main(["export", str(run), "--format", "onnx", "--out", str(run)]) == 2  # the run folder itself
    assert "is a distill run folder, not a `distill export` folder" in capsys.readouterr().err
    for fmt in ("torchscript", "safetensors"):
        assert main(["export", str(run), "--format", fmt, "--quantize", "int8", "--out", str(tmp_path / "q")]) == 2
        assert "use it with --format onnx" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "--out names the export folder" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_a_new_export_replaces_only_what_distill_wrote(png_run, tmp_path):
    run, _ = png_run
    out = tmp_path / "e"
    assert main(["export", str(run), "--format", "torchscript", "--out", str(out)]) == 0
    (out / "notes.txt").write_text("the user's, in distill's folder")
    assert main(["export", str(run), "--format", "onnx", "--out", str(out)]) == 0  # one model per folder
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "labels.json", "model.onnx", "notes.txt",
                                                            "preprocess.json"])
    assert (out / "notes.txt").read_text() == "the user's, in distill's folder"
