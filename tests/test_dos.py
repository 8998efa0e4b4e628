"""What a config or a data file can make distill allocate is bounded (issue 14, item 5): YAML
alias bombs, huge values in error messages, and datasets larger than memory are refused with
a short message before anything big is built."""

from __future__ import annotations

import gzip
import struct
import tracemalloc

import numpy as np
import pytest

from distill.cli import main
from distill.config import load_config, parse_override
from distill.data import image_folder as folder_mod
from distill.data import memory
from distill.data.augment import channel_stats
from distill.data.idx import read_idx
from distill.data.readers import read_dataset
from distill.errors import ConfigError, DistillError, short

SHORT = 1000  # characters: one readable paragraph


def _bomb(levels: int) -> str:
    """The "billion laughs": 9**levels strings from a few hundred bytes of aliases."""
    names = "abcdefghijklmnop"
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"{names[i]}: &{names[i]} [" + ",".join([f"*{names[i - 1]}"] * 9) + "]")
    lines.append(f"train: {{epochs: *{names[levels - 1]}}}")  # where the bomb was used
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- YAML


@pytest.mark.parametrize("levels", [7, 8, 9])
def test_alias_bomb_is_refused(tmp_path, levels):
    p = tmp_path / "bomb.yaml"
    p.write_text(_bomb(levels))
    assert p.stat().st_size < 400  # the was 353 bytes
    with pytest.raises(ConfigError, match="alias") as e:
        load_config(p)
    assert len(str(e.value)) < SHORT and str(p) in str(e.value)


def test_alias_bomb_cli_exits_2(tmp_path, capsys):
    p = tmp_path / "bomb.yaml"
    p.write_text(_bomb(9))
    assert main(["run", str(p), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "alias" in err and "Traceback" not in err and len(err) < SHORT


def test_alias_in_override_is_text_not_expanded():
    bomb = "[" + ",".join(["&a [x,x,x,x,x,x,x,x,x]"] + ["*a"] * 8) + "]"
    key, value = parse_override(f"name={bomb}")
    assert key == ["name"] and value == bomb  # the text itself, never the expansion


@pytest.mark.parametrize("text, rule", [
    ("x: " + "[" * 60 + "1" + "]" * 60 + "\n", "nested more than"),
    ("x: [" + ",".join(["1"] * 12_000) + "]\n", "more than 10000 values"),
    ("name: " + "x" * (1 << 20) + "\n", "at most 1048576"),
])
def test_yaml_size_depth_and_node_caps(tmp_path, text, rule):
    p = tmp_path / "big.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=rule) as e:
        load_config(p)
    assert len(str(e.value)) < SHORT


def test_resumed_run_folder_config_is_read_with_the_same_limits(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(_bomb(8))
    assert main(["run", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "alias" in err and len(err) < SHORT


# ---------------------------------------------------------------- message length


def test_huge_override_value_gives_a_short_message():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.epochs=" + "x" * 10**6])
    msg = str(e.value)
    assert len(msg) < SHORT and "train.epochs" in msg and "..." in msg


@pytest.mark.parametrize("override", [
    "x" * 10**6 + "=1",  # an unknown top-level key
    "train." + "y" * 10**6 + "=1",  # an unknown nested key
    "x" * 10**6,  # no '='
    "loss." + "z" * 10**5 + ".weight=1",  # an unknown loss (its type defaults to its name)
    "data.augment=[" + ",".join(["{name: zz}"] * 2000) + "]",  # a long list, quoted back
    "data.augment=[" + ",".join(["{name: zz}"] * 50_000) + "]",  # past the node cap
])
def test_huge_override_keys_and_texts_give_short_messages(override):
    with pytest.raises(DistillError) as e:
        cfg = load_config(None, [override])
        from distill.data import build_data  # data.augment is checked when the data are built

        build_data(cfg.data)
    assert len(str(e.value)) < SHORT


def test_cli_clips_any_long_message(capsys, monkeypatch):
    import distill.cli as cli

    def boom(args):
        raise DistillError("y" * 10**6)

    monkeypatch.setattr(cli, "cmd_losses", boom)
    assert cli.main(["losses"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: yyy") and len(err) <= cli.MAX_MESSAGE + 20


def test_short_never_builds_the_whole_repr():
    assert "..." in short("x" * 10**7) and len(short("x" * 10**7)) <= 200
    assert len(short([["z" * 10**5] * 10**3] * 10)) <= 200
    assert short(5) == "5" and short("ab") == "'ab'"


# ---------------------------------------------------------------- memory before decoding


def _folder(root, sizes=((10, 20),) * 4):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        d = root / ("a" if i % 2 else "b")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_huge_data_size_is_refused_before_decoding(tmp_path, monkeypatch):
    root = _folder(tmp_path / "imgs")
    monkeypatch.setattr(memory, "data_memory_budget", lambda: 8 << 30)

    def no_decode(*a, **k):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(folder_mod, "_decode", no_decode)
    with pytest.raises(DistillError, match="at most 4096|from 1 to 4096") as e:
        read_dataset("folder", root, size=100000)
    assert len(str(e.value)) < SHORT
    monkeypatch.setattr(memory, "data_memory_budget", lambda: 512 << 20)
    with pytest.raises(DistillError, match=r"4 images .*\(4000x8000 RGB\).*data\.size") as e:
        read_dataset("folder", root, size=4000)  # 4 x 3 x 4000 x 8000 = 384 MB, 2 copies > 512 MiB
    assert len(str(e.value)) < SHORT


def test_cli_huge_size_exits_2(tmp_path, capsys):
    root = _folder(tmp_path / "imgs")
    code = main(["run", "--quiet", "--no-report", "--out", str(tmp_path / "run"), "data.name=folder",
                 f"data.path={root}", "data.size=100000", "train.epochs=1"])
    err = capsys.readouterr().err
    assert code == 2 and "4096" in err and "Traceback" not in err and len(err) < SHORT


def test_memory_estimate(tmp_path, monkeypatch):
    root = _folder(tmp_path / "imgs")  # 4 images 10x20 -> size 8: 8x16 each, 3 x 8 x 16 = 384 B
    monkeypatch.setattr(memory, "data_memory_budget", lambda: 3000)
    with pytest.raises(DistillError) as e:
        read_dataset("folder", root, size=8)  # 4 x 384 = 1536 B, x2 copies = 3072 B > 3000
    assert "1.50 KiB decoded" in str(e.value) and "3.00 KiB" in str(e.value)
    assert "2.93 KiB budget" in str(e.value)
    monkeypatch.setattr(memory, "data_memory_budget", lambda: 3072)
    raw = read_dataset("folder", root, size=8)
    assert raw.x.shape == (4, 3, 8, 16) and raw.x.nbytes == 1536
    raw = read_dataset("folder", root, size=8, crop=6)
    assert raw.x.shape == (4, 3, 6, 6)


def test_elongated_image_is_refused_before_its_resize(tmp_path, monkeypatch):
    root = _folder(tmp_path / "imgs", sizes=((4, 4), (4, 4), (2, 4000), (4, 4)))
    monkeypatch.setattr(memory, "data_memory_budget", lambda: 256 << 20)
    with pytest.raises(DistillError, match=r"Image .*2\.png' resized to 4096x8192000") as e:
        read_dataset("folder", root, size=4096, crop=4)
    assert len(str(e.value)) < SHORT


def test_idx_gzip_bomb_is_refused_before_inflating(tmp_path, monkeypatch):
    p = tmp_path / "train-images-idx3-ubyte.gz"
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">III", 100_000, 1000, 1000)
    with gzip.open(p, "wb") as f:
        f.write(header + bytes(1 << 16))  # declares 100 GB; a few bytes on disk
    monkeypatch.setattr(memory, "data_memory_budget", lambda: 1 << 30)
    with pytest.raises(DistillError, match=r"IDX file .*\(100000, 1000, 1000\).*93\.13 GiB"):
        read_idx(p)


def test_npz_and_csv_are_estimated_from_headers(tmp_path, monkeypatch):
    npz = tmp_path / "d.npz"
    np.savez_compressed(npz, x=np.zeros((2000, 1000), np.float32), y=np.zeros(2000, np.int64))
    assert npz.stat().st_size < 200_000  # 8 MB of zeros
    csv = tmp_path / "d.csv"
    csv.write_text("a,b,label\n" + "1,2,0\n3,4,1\n" * 1000)
    monkeypatch.setattr(memory, "data_memory_budget", lambda: 1 << 20)
    with pytest.raises(DistillError, match=r"arrays in .*x \(2000, 1000\).*7\.64 MiB decoded"):
        read_dataset("npz", npz)
    monkeypatch.setattr(memory, "data_memory_budget", lambda: 100_000)
    with pytest.raises(DistillError, match=r"about 6003 values.*\.npz"):
        read_dataset("csv", csv)


# ---------------------------------------------------------------- normalisation statistics


def test_channel_stats_in_chunks_equal_one_shot():
    x = np.random.default_rng(1).integers(0, 256, (300, 3, 16, 16), dtype=np.uint8)
    one = channel_stats(x, scale=1 / 255, chunk=10**9, max_elements=10**12)
    for rows, elements in [(7, 10**12), (10**9, 1000), (10**9, 1)]:
        parts = channel_stats(x, scale=1 / 255, chunk=rows, max_elements=elements)
        np.testing.assert_allclose(parts, one, rtol=1e-6, atol=1e-9)
    ref = (x / 255).astype(np.float64)
    np.testing.assert_allclose(one[0], ref.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(one[1], ref.std(axis=(0, 2, 3)), rtol=1e-8)


def test_channel_stats_peak_is_one_chunk():
    x = np.random.default_rng(2).integers(0, 256, (400, 3, 32, 32), dtype=np.uint8)  # 1.2 MB
    tracemalloc.start()
    try:
        channel_stats(x, scale=1 / 255, max_elements=1 << 15)  # 256 KiB of float64 at a time
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < x.nbytes  # it was 16x: a float64 copy, its scaled copy and its square
