"""Readers: each test writes its own tiny dataset under tmp_path (nothing is downloaded)."""

from __future__ import annotations

import gzip
import io
import pickle
import struct

import numpy as np
import pytest

from distill.data.readers import (
    RawData,
    check_labels,
    read_cifar,
    read_csv,
    read_dataset,
    read_idx,
    read_image_folder,
    read_mnist,
    read_npz,
)
from distill.errors import DistillError

Image = pytest.importorskip("PIL.Image")


# ---------------------------------------------------------------------------- CIFAR helpers


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` opcodes, like the pickles in the real CIFAR archives."""

    def save_bytes(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    def save_str(self, obj):  # Python 2 `str` was bytes: 'u1' and '|' in numpy's dtype state
        self.save_bytes(obj.encode("ascii"))

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def _py2_dumps(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # numpy 1.x (which wrote the real files) named the module numpy.core.multiarray
    return buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def _cifar_batch(n, label_key, num_classes, rng):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=n).tolist()
    return {b"batch_label": b"x", label_key: labels, b"data": data}


def _write_cifar10(root, rng, py2=True, n=2):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        b = _cifar_batch(n, b"labels", 10, rng)
        batches[name] = b
        (d / name).write_bytes(_py2_dumps(b) if py2 else pickle.dumps(b, protocol=4))
    return d, batches


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_cifar10_roundtrip_folder_or_parent(tmp_path, rng):
    d, batches = _write_cifar10(tmp_path, rng)
    for path in (d, tmp_path, str(tmp_path)):
        x, y, xt, yt = read_cifar(path, 10)
        assert x.shape == (10, 3, 32, 32) and x.dtype == np.uint8
        assert xt.shape == (2, 3, 32, 32) and y.dtype == np.int64
        want = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
        np.testing.assert_array_equal(x.reshape(10, -1), want)
        # channel-major rows: the first 1024 bytes are the red plane, row by row
        np.testing.assert_array_equal(x[3, 0, 1], want[3, 32:64])
        np.testing.assert_array_equal(x[3, 2], want[3, 2048:].reshape(32, 32))
        assert y.tolist() == sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
        assert yt.tolist() == batches["test_batch"][b"labels"]


def test_cifar10_python3_pickles(tmp_path, rng):
    _, batches = _write_cifar10(tmp_path, rng, py2=False)
    _, _, xt, yt = read_cifar(tmp_path)
    np.testing.assert_array_equal(xt.reshape(2, -1), batches["test_batch"][b"data"])


def test_cifar100_fine_labels(tmp_path, rng):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    tr = _cifar_batch(3, b"fine_labels", 100, rng)
    tr[b"fine_labels"] = [0, 57, 99]
    tr[b"coarse_labels"] = [0, 1, 19]
    te = _cifar_batch(2, b"fine_labels", 100, rng)
    (d / "train").write_bytes(_py2_dumps(tr))
    (d / "test").write_bytes(_py2_dumps(te))
    x, y, xt, yt = read_cifar(tmp_path, num_classes=100)
    assert x.shape == (3, 3, 32, 32) and xt.shape == (2, 3, 32, 32)
    assert y.tolist() == [0, 57, 99]
    np.testing.assert_array_equal(x.reshape(3, -1), tr[b"data"])


def test_cifar_missing_path_names_layout(tmp_path):
    with pytest.raises(DistillError, match="does not exist") as e:
        read_cifar(tmp_path / "nope")
    assert "cifar-10-batches-py" in str(e.value) and "data_batch_1" in str(e.value)
    with pytest.raises(DistillError, match="cifar-100-python"):
        read_cifar(tmp_path, num_classes=100)
    with pytest.raises(DistillError, match="10 or 100"):
        read_cifar(tmp_path, num_classes=20)


def test_cifar_missing_batch_and_archive(tmp_path, rng):
    d, _ = _write_cifar10(tmp_path, rng)
    (d / "data_batch_3").unlink()
    with pytest.raises(DistillError, match="missing data_batch_3"):
        read_cifar(tmp_path)
    tgz = tmp_path / "cifar-10-python.tar.gz"
    tgz.write_bytes(b"\x1f\x8b")
    with pytest.raises(DistillError, match="extract it first"):
        read_cifar(tgz)


def test_cifar_bad_contents(tmp_path, rng):
    d, batches = _write_cifar10(tmp_path, rng)
    b = dict(batches["data_batch_2"])
    b[b"labels"] = [3, 10]
    (d / "data_batch_2").write_bytes(_py2_dumps(b))
    with pytest.raises(DistillError, match=r"label 10 .*\[0, 10\)") as e:
        read_cifar(tmp_path)
    assert "data_batch_2" in str(e.value)
    (d / "data_batch_2").write_bytes(_py2_dumps({b"data": b[b"data"]}))
    with pytest.raises(DistillError, match="b'labels'"):
        read_cifar(tmp_path)
    (d / "data_batch_2").write_bytes(b"not a pickle")
    with pytest.raises(DistillError, match="Could not read CIFAR batch .*data_batch_2"):
        read_cifar(tmp_path)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_cifar_refuses_arbitrary_globals(tmp_path, rng, capsys):
    d, _ = _write_cifar10(tmp_path, rng)
    (d / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(DistillError, match="refusing to load global builtins.print"):
        read_cifar(tmp_path)
    assert "never run" not in capsys.readouterr().out


# ---------------------------------------------------------------------------- MNIST / IDX


def _idx_bytes(a: np.ndarray, code=0x08, dtype=">u1") -> bytes:
    head = struct.pack(">BBBB", 0, 0, code, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
    return head + a.astype(dtype).tobytes()


def _write_mnist(d, rng, n=(3, 2), gz=(False, True)):
    d.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, count, zipped in (("train", n[0], gz[0]), ("t10k", n[1], gz[1])):
        x = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=count).astype(np.uint8)
        arrays[split] = (x, y)
        for kind, a, nd in (("images", x, 3), ("labels", y, 1)):
            name = f"{split}-{kind}-idx{nd}-ubyte"
            data = _idx_bytes(a)
            if zipped:
                (d / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (d / name).write_bytes(data)
    return arrays


def test_mnist_raw_and_gz(tmp_path, rng):
    arrays = _write_mnist(tmp_path, rng)
    x, y, xt, yt = read_mnist(tmp_path)
    assert x.shape == (3, 1, 28, 28) and xt.shape == (2, 1, 28, 28)
    assert x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(x[:, 0], arrays["train"][0])
    np.testing.assert_array_equal(xt[:, 0], arrays["t10k"][0])
    assert y.tolist() == arrays["train"][1].tolist() and yt.tolist() == arrays["t10k"][1].tolist()


def test_mnist_all_gz_in_raw_subfolder(tmp_path, rng):
    arrays = _write_mnist(tmp_path / "raw", rng, gz=(True, True))
    x, y, _, _ = read_mnist(tmp_path)
    np.testing.assert_array_equal(x[:, 0], arrays["train"][0])


def test_read_idx_other_dtypes(tmp_path):
    a = np.array([[1, -2, 70000], [3, 4, -5]], dtype=np.int32)
    f = tmp_path / "a.idx"
    f.write_bytes(_idx_bytes(a, code=0x0C, dtype=">i4"))
    out = read_idx(f)
    assert out.dtype == np.int32 and out.dtype.isnative
    np.testing.assert_array_equal(out, a)


def test_mnist_missing_files(tmp_path, rng):
    with pytest.raises(DistillError, match="does not exist") as e:
        read_mnist(tmp_path / "nope")
    assert "train-images-idx3-ubyte" in str(e.value)
    _write_mnist(tmp_path, rng)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DistillError, match="Missing t10k-labels-idx1-ubyte under"):
        read_mnist(tmp_path)


def test_mnist_bad_magic_truncated_and_mismatch(tmp_path, rng):
    _write_mnist(tmp_path, rng)
    f = tmp_path / "train-images-idx3-ubyte"
    good = f.read_bytes()
    f.write_bytes(b"\x12\x34" + good[2:])
    with pytest.raises(DistillError, match="not an IDX file"):
        read_mnist(tmp_path)
    f.write_bytes(good[:-5])
    with pytest.raises(DistillError, match="truncated") as e:
        read_mnist(tmp_path)
    assert "train-images-idx3-ubyte" in str(e.value)
    f.write_bytes(_idx_bytes(rng.integers(0, 256, size=(4, 28, 28))))
    with pytest.raises(DistillError, match="4 inputs but 3 labels"):
        read_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    f.write_bytes(good)
    with pytest.raises(DistillError, match="Could not read IDX file .*t10k-images"):
        read_mnist(tmp_path)


# ---------------------------------------------------------------------------- image folders


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _folder(root, rng, hw=(6, 5)):
    imgs = {}
    for cls, names in (("dog", ["a.png", "b.png"]), ("cat", ["z.png"])):
        for n in names:
            a = rng.integers(0, 256, size=(*hw, 3), dtype=np.uint8)
            _png(root / cls / n, a)
            imgs[(cls, n)] = a
    return imgs


def test_image_folder_roundtrip(tmp_path, rng):
    imgs = _folder(tmp_path, rng)
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden").mkdir()
    x, y, classes = read_image_folder(tmp_path)
    assert classes == ["cat", "dog"]
    assert x.shape == (3, 3, 6, 5) and x.dtype == np.uint8
    assert y.tolist() == [0, 1, 1]
    np.testing.assert_array_equal(x[0], imgs[("cat", "z.png")].transpose(2, 0, 1))
    np.testing.assert_array_equal(x[2], imgs[("dog", "b.png")].transpose(2, 0, 1))


def test_image_folder_resize_crop_and_gray(tmp_path, rng):
    _png(tmp_path / "a" / "wide.png", rng.integers(0, 256, size=(12, 20, 3), dtype=np.uint8))
    gray = rng.integers(0, 256, size=(30, 15), dtype=np.uint8)
    _png(tmp_path / "b" / "gray.png", gray)
    x, y, _ = read_image_folder(tmp_path, size=10, crop=8)
    assert x.shape == (2, 3, 8, 8)
    assert np.array_equal(x[1, 0], x[1, 1]) and np.array_equal(x[1, 1], x[1, 2])
    x, _, _ = read_image_folder(tmp_path, size=(9, 7))
    assert x.shape == (2, 3, 9, 7)
    x, _, _ = read_image_folder(tmp_path, size=(16, 16), crop=(4, 6))
    assert x.shape == (2, 3, 4, 6)
    with pytest.raises(DistillError, match="crop 20x20 is larger"):
        read_image_folder(tmp_path, size=10, crop=20)


def test_image_folder_mixed_sizes_need_size(tmp_path, rng):
    _folder(tmp_path, rng)
    _png(tmp_path / "cat" / "big.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DistillError, match="same size"):
        read_image_folder(tmp_path)


def test_image_folder_corrupt_file_is_named(tmp_path, rng):
    _folder(tmp_path, rng)
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DistillError, match=r"broken\.png"):
        read_image_folder(tmp_path)
    good = (tmp_path / "dog" / "a.png").read_bytes()
    (tmp_path / "dog" / "broken.png").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(DistillError, match=r"broken\.png"):
        read_image_folder(tmp_path)


def test_image_folder_layout_errors(tmp_path, rng):
    with pytest.raises(DistillError, match="one subfolder per class"):
        read_image_folder(tmp_path / "missing")
    with pytest.raises(DistillError, match="no class subfolders"):
        read_image_folder(tmp_path)
    _png(tmp_path / "loose.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DistillError, match="holds images directly"):
        read_image_folder(tmp_path)
    _folder(tmp_path / "ds", rng)
    (tmp_path / "ds" / "empty").mkdir()
    (tmp_path / "ds" / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DistillError, match=r"Class folder .*empty' contains no images"):
        read_image_folder(tmp_path / "ds")


# ---------------------------------------------------------------------------- npz / csv


def test_npz_roundtrip(tmp_path, rng):
    x = rng.normal(size=(5, 2, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 1, 0])
    np.savez(tmp_path / "a.npz", x=x, y=y)
    xo, yo, xt, yt = read_npz(tmp_path / "a.npz")
    np.testing.assert_array_equal(xo, x)
    assert yo.dtype == np.int64 and yo.tolist() == y.tolist() and xt is None and yt is None
    np.savez(tmp_path / "b.npz", x=x, y=y.astype(np.float32), x_test=x[:2], y_test=y[:2])
    _, yo, xt, yt = read_npz(tmp_path / "b.npz")
    assert yo.dtype == np.int64 and xt.shape == (2, 2, 3) and yt.tolist() == [0, 1]


def test_npz_errors(tmp_path):
    with pytest.raises(DistillError, match="arrays 'x' .*and 'y'"):
        read_npz(tmp_path / "missing.npz")
    np.savez(tmp_path / "a.npz", inputs=np.zeros((2, 3)))
    with pytest.raises(DistillError, match=r"it needs 'x' and 'y'"):
        read_npz(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", x=np.zeros((2, 3)), y=[0, 1], x_test=np.zeros((1, 3)))
    with pytest.raises(DistillError, match="only one of 'x_test' and 'y_test'"):
        read_npz(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", x=np.zeros((2, 3)), y=[0, -1])
    with pytest.raises(DistillError, match="label -1"):
        read_npz(tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 3)), y=[0, 1])
    with pytest.raises(DistillError, match="3 inputs but 2 labels"):
        read_npz(tmp_path / "d.npz")
    np.savez(tmp_path / "e.npz", x=np.zeros((0, 3)), y=np.zeros(0, np.int64))
    with pytest.raises(DistillError, match="empty"):
        read_npz(tmp_path / "e.npz")
    np.savez(tmp_path / "f.npz", x=np.array([{"a": 1}], dtype=object), y=[0])
    with pytest.raises(DistillError, match="Could not read"):
        read_npz(tmp_path / "f.npz")
    (tmp_path / "g.npz").write_text("hello")
    with pytest.raises(DistillError, match="Could not read"):
        read_npz(tmp_path / "g.npz")


def test_csv_roundtrip(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("a,label,b\n1.5,0,2\n-3,2,4e-1\n\n0,1.0,0\n")
    x, y = read_csv(f)
    assert x.dtype == np.float32 and x.tolist() == [[1.5, 2.0], [-3.0, 0.4000000059604645], [0, 0]]
    assert y.tolist() == [0, 2, 1]
    f.write_text("target;f\n1;2\n")
    x, y = read_csv(f, label_column="target", delimiter=";")
    assert x.tolist() == [[2.0]] and y.tolist() == [1]


def test_csv_errors(tmp_path):
    f = tmp_path / "d.csv"
    with pytest.raises(DistillError, match="header row"):
        read_csv(f)
    f.write_text("a,b\n1,2\n")
    with pytest.raises(DistillError, match=r"no column 'label' in its header row \(a, b\)"):
        read_csv(f)
    f.write_text("a,b,label\n1,2,0\n3,abc,1\n")
    with pytest.raises(DistillError, match=r"line 3, column 'b': 'abc' is not a number"):
        read_csv(f)
    f.write_text("a,label\n1,cat\n")
    with pytest.raises(DistillError, match=r"line 2, column 'label': 'cat' is not an integer"):
        read_csv(f)
    f.write_text("a,label\n1,0.5\n")
    with pytest.raises(DistillError, match="line 2, column 'label'"):
        read_csv(f)
    f.write_text("a,label\n1,0,7\n")
    with pytest.raises(DistillError, match="line 2 has 3 fields"):
        read_csv(f)
    f.write_text("a,label\n")
    with pytest.raises(DistillError, match="empty"):
        read_csv(f)
    f.write_text("a,label\n1,-2\n")
    with pytest.raises(DistillError, match="label -2"):
        read_csv(f)
    f.write_text("")
    with pytest.raises(DistillError, match="empty"):
        read_csv(f)


# ---------------------------------------------------------------------------- labels, dispatch


def test_check_labels():
    assert check_labels([0, 2, 1], 3).dtype == np.int64
    assert check_labels(np.array([1.0, 0.0])).tolist() == [1, 0]
    with pytest.raises(DistillError, match=r"label 10 at position 1, outside the expected range \[0, 10\)"):
        check_labels([3, 10, 12], 10)
    with pytest.raises(DistillError, match="2 label"):
        check_labels([3, 10, 12], 10)
    with pytest.raises(DistillError, match="label -1"):
        check_labels([0, -1])
    with pytest.raises(DistillError, match="empty"):
        check_labels([], 10)
    with pytest.raises(DistillError, match="0.5"):
        check_labels([0.5])
    with pytest.raises(DistillError, match="1-D"):
        check_labels(np.zeros((2, 2), np.int64))
    with pytest.raises(DistillError, match="integer class indices"):
        check_labels(np.array(["a", "b"]))


def test_read_dataset_dispatch(tmp_path, rng):
    _write_cifar10(tmp_path, rng)
    d = read_dataset("cifar10", tmp_path)
    assert isinstance(d, RawData) and d.x.shape == (10, 3, 32, 32) and d.y_test.shape == (2,)
    _folder(tmp_path / "imgs", rng)
    d = read_dataset("folder", tmp_path / "imgs", size=(4, 4))
    assert d.class_names == ["cat", "dog"] and d.x_test is None and d.x.shape == (3, 3, 4, 4)
    with pytest.raises(DistillError, match="set data.path"):
        read_dataset("mnist", None)
    with pytest.raises(DistillError, match="Unknown dataset 'svhn'"):
        read_dataset("svhn", tmp_path)
