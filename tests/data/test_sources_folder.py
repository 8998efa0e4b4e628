"""data.name=folder decodes lazily: every header read at open, pixels decoded by `take` (in the
streaming loader's workers, or up front for the memory loader), the same pixels either way;
unreadable files named (from a worker too) or, with data.skip_corrupt, left out at open."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from distill.cli import main
from distill.config import load_config
from distill.data import build_data
from distill.data import image_folder as folder_mod
from distill.data.image_folder import FolderSamples, open_image_folder, read_image_folder
from distill.data.source import open_source
from distill.data.stream import StreamLoader
from distill.errors import ConfigError, DistillError

FAST = ["--quiet", "--no-report", "train.epochs=1", "teacher.model=mlp", "teacher.kwargs.hidden=[16]",
        "student.model=mlp", "student.kwargs.hidden=[16]", "data.batch_size=16"]


def _folder(root, per_class=12, hw=(8, 8), classes=("a", "b", "c")):
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
            a[..., 0] = 80 * c  # the class is visible in channel 0
            Image.fromarray(a).save(root / name / f"{i:02d}.png")
    return root


def _truncate(path):
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # the header survives, the pixel data do not


def _cfg(root, *extra):
    return load_config(overrides=["data.name=folder", f"data.path={root}", *extra]).data


def test_open_reads_headers_only_and_take_decodes_on_demand(tmp_path, monkeypatch):
    root = _folder(tmp_path / "imgs")
    decoded = []
    real = folder_mod._decode
    monkeypatch.setattr(folder_mod, "_decode", lambda f, *a: decoded.append(f.name) or real(f, *a))
    source = open_source(_cfg(root))
    assert source.lazy and source.class_names == ["a", "b", "c"] and decoded == []
    assert isinstance(source.train, FolderSamples) and source.train.sample_shape == (3, 8, 8)
    assert source.train.labels.tolist() == [0] * 12 + [1] * 12 + [2] * 12
    rows = source.train.take([13, 0])
    assert decoded == ["01.png", "00.png"] and rows.shape == (2, 3, 8, 8) and rows.dtype == np.uint8
    x, _, _ = read_image_folder(root)  # the eager reader: the same decoding path
    np.testing.assert_array_equal(rows, x[[13, 0]])
    np.testing.assert_array_equal(np.asarray(Image.open(root / "b" / "01.png")).transpose(2, 0, 1), rows[0])


def test_geometry_and_the_same_size_error_come_before_any_decoding(tmp_path, monkeypatch):
    root = _folder(tmp_path / "imgs", per_class=2)
    Image.new("RGB", (12, 10)).save(root / "a" / "big.png")
    monkeypatch.setattr(folder_mod, "_decode", lambda *a: pytest.fail("decoded"))
    with pytest.raises(DistillError, match=r"big\.png' is 10x12 but .* is 8x8; set data\.size"):
        open_image_folder(root)
    samples, _ = open_image_folder(root, size=(6, 6), crop=4)
    assert samples.sample_shape == (3, 4, 4)


def test_a_corrupt_header_is_named_or_skipped_with_a_count(tmp_path):
    root = _folder(tmp_path / "imgs")
    (root / "b" / "broken.png").write_bytes(b"\x89PNG not an image")
    (root / "c" / "empty.png").write_bytes(b"")
    with pytest.raises(DistillError, match=r"broken\.png.*data\.skip_corrupt=true.*2 such file"):
        open_image_folder(root)
    with pytest.warns(UserWarning, match=r"left out 2 unreadable image\(s\)"):
        samples, _ = open_image_folder(root, skip_corrupt=True)
    assert len(samples) == 36 and [p.rsplit("/", 1)[1] for p in samples.skipped] == ["broken.png", "empty.png"]
    assert samples.labels.tolist() == [0] * 12 + [1] * 12 + [2] * 12
    with pytest.warns(UserWarning):
        source = open_source(_cfg(root, "data.skip_corrupt=true"))
    assert len(source.train) == 36


def test_skipping_a_whole_class_is_an_error(tmp_path):
    root = _folder(tmp_path / "imgs", per_class=2)
    for f in (root / "b").iterdir():
        f.write_bytes(b"junk")
    with pytest.raises(DistillError, match=r"Every image in class folder .*b' is unreadable"):
        open_image_folder(root, skip_corrupt=True)


def test_damaged_pixels_are_named_from_a_worker(tmp_path):
    root = _folder(tmp_path / "imgs")
    _truncate(root / "b" / "03.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the header reads: nothing is skipped
        samples, _ = open_image_folder(root, skip_corrupt=True)
    loader = StreamLoader(samples, 8, shuffle=True, workers=2, persistent=False)
    with pytest.raises(DistillError) as e:
        for _ in loader:
            pass
    msg = str(e.value)
    assert "03.png" in msg and "pixel data are damaged" in msg
    assert "Traceback" not in msg and "worker" not in msg  # the message as raised, not torch's wrapping


def test_damaged_pixels_exit_2_with_one_message(tmp_path, capsys):
    root = _folder(tmp_path / "imgs")
    _truncate(root / "a" / "05.png")
    code = main(["run", "--out", str(tmp_path / "run"), *FAST, "data.name=folder", f"data.path={root}",
                 "data.loader=stream", "data.workers=2"])
    err = capsys.readouterr().err
    assert code == 2 and "05.png" in err and "Traceback" not in err


def test_memory_and_stream_loaders_see_the_same_pixels(tmp_path):
    root = _folder(tmp_path / "imgs")
    memory = build_data(_cfg(root, "data.loader=memory", "data.batch_size=8"))
    stream = build_data(_cfg(root, "data.loader=stream", "data.workers=0", "data.batch_size=8"))
    assert (memory.loader, stream.loader) == ("memory", "stream")
    for a, b in zip(memory.teacher_train, stream.teacher_train, strict=True):
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    for a, b in zip(memory.test, stream.test, strict=True):
        assert torch.equal(a.inputs, b.inputs)
    assert memory.stats == stream.stats


def test_auto_streams_a_folder_that_does_not_fit(tmp_path):
    root = _folder(tmp_path / "imgs")
    assert build_data(_cfg(root)).loader == "memory"
    data = build_data(_cfg(root, "data.memory_limit_mb=1", "data.size=[300, 300]", "data.workers=0"))
    assert data.loader == "stream" and "data.loader=auto" in data.loader_note


def test_fingerprint_names_files_not_pixels(tmp_path):
    root = _folder(tmp_path / "imgs", per_class=2)
    first = open_image_folder(root)[0].fingerprint()
    assert open_image_folder(root)[0].fingerprint() == first
    assert open_image_folder(root, size=6)[0].fingerprint() != first
    Image.new("RGB", (8, 8)).save(root / "a" / "00.png")  # another file's size and mtime
    assert open_image_folder(root)[0].fingerprint() != first


def test_skip_corrupt_is_refused_elsewhere():
    with pytest.raises(ConfigError, match="data.skip_corrupt=True would be ignored: only data.name=folder"):
        load_config(overrides=["data.name=npz", "data.path=x.npz", "data.skip_corrupt=true"])
    load_config(overrides=["data.name=folder", "data.path=x", "data.skip_corrupt=true"])


def test_cli_run_streams_a_folder(tmp_path, capsys):
    root = _folder(tmp_path / "imgs")
    out = tmp_path / "run"
    code = main(["run", "--out", str(out), *FAST, "data.name=folder", f"data.path={root}",
                 "data.loader=stream", "data.workers=0"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["loader"] == "stream" and summary["data"]["num_classes"] == 3


def test_the_threaded_header_scan_keeps_file_order(tmp_path, monkeypatch):
    root = _folder(tmp_path / "imgs")
    (root / "b" / "05.png").write_bytes(b"junk")
    (root / "c" / "01.png").write_bytes(b"junk")
    with pytest.warns(UserWarning):
        alone, _ = open_image_folder(root, skip_corrupt=True)
    monkeypatch.setattr(folder_mod, "_SCAN_CHUNK", 3)  # 36 files: 12 chunks over the threads
    with pytest.warns(UserWarning):
        threaded, _ = open_image_folder(root, skip_corrupt=True)
    assert threaded.files == alone.files and threaded.skipped == alone.skipped
    with pytest.raises(DistillError, match=r"b/05\.png"):  # the first unreadable file, in file order
        open_image_folder(root)
