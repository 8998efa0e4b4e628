"""Image-folder datasets: one subfolder per class, read with Pillow, decoded on demand.

`open_image_folder` lists the files and reads every file's header (format and size, a few KB,
nothing decoded; in threads for large folders), so that before any training every image's
final size is known: each must end up the same size (data.size / data.crop resize and crop),
and a file whose header cannot be read is named at once. The result is `FolderSamples`, whose
`take` decodes only the rows asked for: the streaming loader decodes in its workers, the
memory loader decodes every row up front through the same `take`, so both see the same pixels.
`read_image_folder` is that materialized (the eager reader, with its memory check).

Unreadable files. With data.skip_corrupt=true a file whose header cannot be read is left out
when the folder is opened (they are counted, and a warning names the first), so the sample
indices, splits and labels are fixed from then on. A header scan cannot see damaged pixel
data (a truncated JPEG or PNG opens fine and fails only when decoded; Pillow's verify() checks
PNG checksums but nothing in a JPEG, so it is not used). Such a file stops the run when it is
decoded with a DistillError naming it, skip_corrupt or not: by then it has an index, a label
and a split, and replacing it by a blank image would train on a picture of nothing with a
real label. Fix or remove it; a streaming run finds it at the latest in the statistics pass
over the training images, or when validation or test first reads it.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import DistillError
from .memory import check_fits, check_side
from .samples import Samples
from .transforms import _pair

IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm",
)

_FOLDER_LAYOUT = (
    "An image folder dataset expects one subfolder per class (class index = position of the "
    "folder name in sorted order), each holding image files (" + ", ".join(IMAGE_EXTENSIONS)
    + ")"
)
_SCAN_THREADS = 8  # header reads wait on the disk (a network one most): threads overlap the waits
_SCAN_CHUNK = 512
_READ_ERRORS = (OSError, SyntaxError, ValueError)  # + Image.DecompressionBombError


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def pillow():
    """The PIL.Image module (Pillow is a dependency; a clear error if it is missing)."""
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow is a dependency
        raise DistillError("Reading images needs Pillow: pip install pillow.") from e
    return Image


def geometry(size=None, crop=None) -> tuple:
    """(short_side, size_hw, crop_hw) of data.size / data.crop, checked: `size` an int resizes
    the shorter side keeping the aspect ratio, (h, w) resizes to exactly that; `crop` (int or
    (h, w)) then takes a centre crop."""
    for value, name in ((size, "size"), (crop, "crop")):
        if value is not None:
            check_side(value, name)
    size_hw = None if size is None or isinstance(size, int) else _pair(size, "size")
    short_side = size if isinstance(size, int) else None
    crop_hw = None if crop is None else _pair(crop, "crop")
    return short_side, size_hw, crop_hw


def same_size_error(where, planned, first, hw) -> DistillError:
    return DistillError(
        f"Image '{where}' is {planned[0]}x{planned[1]} but '{first}' is {hw[0]}x{hw[1]}; set "
        f"data.size and/or data.crop so that every image ends up the same size."
    )


class FolderSamples(Samples):
    """The images of a class-per-subfolder dataset, decoded when `take` reads them: holds only
    the file list, the labels and the geometry (it pickles small into loader workers)."""

    def __init__(self, root: Path, files: list[str], labels: np.ndarray, geometry_: tuple,
                 hw: tuple[int, int], skipped: list[str] | None = None):
        self.root, self.files, self.geometry = root, files, geometry_
        self.labels = labels
        self.sample_shape, self.dtype = (3, *hw), np.dtype(np.uint8)
        self.skipped = skipped or []  # files left out at open (data.skip_corrupt)
        self._digest: str | None = None

    def take_rows(self, idx):
        Image, hw = pillow(), self.sample_shape[1:]
        out = np.empty((len(idx), *self.sample_shape), dtype=np.uint8)
        for k, i in enumerate(idx):
            f = Path(self.files[i])
            try:
                img = _decode(f, self.geometry, Image)
            except DistillError as e:
                raise DistillError(
                    f"{e} (Its header was read when the folder was opened, so its pixel data are "
                    "damaged; data.skip_corrupt skips only files whose header cannot be read.)"
                ) from None
            if img.shape[:2] != hw:
                raise same_size_error(f, img.shape[:2], self.files[0], hw)
            out[k] = img.transpose(2, 0, 1)
        return out

    def fingerprint(self) -> str:
        """sha256 of the geometry and every file's name, size, mtime and label: the pixels are
        not hashed (that would decode the folder), so an edit that keeps a file's size and
        modification time goes unnoticed."""
        if self._digest is None:
            h = hashlib.sha256(f"folder{self.geometry}{self.sample_shape}".encode())
            for f, label in zip(self.files, self.labels.tolist(), strict=True):
                st = os.stat(f)
                h.update(f"{os.path.relpath(f, self.root)}|{st.st_size}|{st.st_mtime_ns}|{label}\n".encode())
            self._digest = h.hexdigest()
        return self._digest


def open_image_folder(path, size=None, crop=None, skip_corrupt: bool = False):
    """(FolderSamples, class_names) of the class-per-subfolder dataset at `path`: every header
    read, nothing decoded (see the module docstring); images are converted to RGB."""
    Image = pillow()
    root = Path(path)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise DistillError(f"Data path '{root}' {what}. {_FOLDER_LAYOUT}.")
    geo = geometry(size, crop)
    classes, files = _class_files(root)
    sizes = _scan_headers([f for f, _ in files], Image)
    kept = [(f, c, wh) for (f, c), wh in zip(files, sizes, strict=True) if not isinstance(wh, DistillError)]
    bad = [(f, wh) for (f, _), wh in zip(files, sizes, strict=True) if isinstance(wh, DistillError)]
    if bad and not skip_corrupt:
        raise DistillError(f"{bad[0][1]} (Or set data.skip_corrupt=true to leave out files "
                           f"whose header cannot be read; {len(bad)} such file(s) here.)")
    if not kept:
        raise DistillError(f"None of the {len(files)} images under '{root}' can be read "
                           f"(the first: '{bad[0][0]}').")
    first, hw = kept[0][0], _planned(kept[0][2], geo, kept[0][0])
    for f, _, wh in kept:
        planned = _planned(wh, geo, f)
        if planned != hw:
            raise same_size_error(f, planned, first, hw)
    empty = sorted(set(range(len(classes))) - {c for _, c, _ in kept})
    if empty:
        raise DistillError(f"Every image in class folder '{root / classes[empty[0]]}' is unreadable, "
                           "so that class has no samples. Fix its images or remove the folder.")
    if bad:
        warnings.warn(f"data.skip_corrupt: left out {len(bad)} unreadable image(s) under '{root}', "
                      f"e.g. '{bad[0][0]}'", stacklevel=2)
    labels = np.array([c for _, c, _ in kept], dtype=np.int64)
    samples = FolderSamples(root, [str(f) for f, _, _ in kept], labels, geo, hw, [str(f) for f, _ in bad])
    return samples, classes


def read_image_folder(path, size=None, crop=None):
    """Read a class-per-subfolder image dataset with Pillow, converted to RGB, into memory.

    `size`: an int resizes the shorter side to `size` keeping the aspect ratio; (h, w) resizes
    to exactly that. `crop` (int or (h, w)) then takes a centre crop. Without either, every
    image must already have the same size. Returns (x uint8 (N, 3, H, W), y int64 (N,),
    class_names list[str]). The decoded size is worked out from the headers and checked
    against the memory budget before any image is decoded.
    """
    samples, classes = open_image_folder(path, size, crop)
    h, w = samples.sample_shape[1:]
    check_fits(len(samples) * 3 * h * w, f"The {len(samples)} images under '{Path(path)}' ({h}x{w} RGB)",
               "Set a smaller data.size (and data.crop), or use a folder with fewer images.")
    return samples.materialize(), samples.labels.copy(), classes


def _scan_headers(files: list[Path], Image) -> list:
    """Each file's (width, height) from its header, or the DistillError reading it raised."""
    def one(f):
        try:
            return _header_size(f, Image)
        except DistillError as e:
            return e

    def some(part):
        return [one(f) for f in part]

    if len(files) < 2 * _SCAN_CHUNK:
        return some(files)
    parts = [files[i : i + _SCAN_CHUNK] for i in range(0, len(files), _SCAN_CHUNK)]
    with ThreadPoolExecutor(_SCAN_THREADS) as pool:  # a chunk per task: a future per file costs more than its read
        return [size for part in pool.map(some, parts) for size in part]


def _header_size(f: Path, Image) -> tuple[int, int]:
    """(width, height) of image file `f`, read from its header: nothing is decoded."""
    try:
        with Image.open(f) as im:
            return im.size
    except (*_READ_ERRORS, Image.DecompressionBombError) as e:
        raise DistillError(f"Could not read image '{f}': {e}. Fix or remove the file.") from e


def _planned(wh: tuple[int, int], geometry, f) -> tuple[int, int]:
    """(h, w) an image of size `wh` ends up at, checked against the memory budget first."""
    short_side, size_hw, crop_hw = geometry
    tw, th = _target(wh, short_side, size_hw)
    check_fits(3 * tw * th, f"Image '{f}' resized to {th}x{tw}",
               "Set a smaller data.size, or remove very elongated images.", copies=1)
    if crop_hw is not None:
        if crop_hw[0] > th or crop_hw[1] > tw:
            raise DistillError(
                f"crop {crop_hw[0]}x{crop_hw[1]} is larger than image '{f}' ({th}x{tw} after "
                f"resizing); choose a smaller crop or a larger size."
            )
        return crop_hw
    return th, tw


def decode_image(f, size=None, crop=None, mode: str = "RGB") -> np.ndarray:
    """Image file `f` as a folder dataset with data.size / data.crop decodes it (converted to
    `mode`, resized, centre-cropped): uint8 (C, H, W). `distill predict` reads files with it."""
    img = _decode(Path(f), geometry(size, crop), pillow(), mode)
    return img[None] if img.ndim == 2 else img.transpose(2, 0, 1)


def _decode(f: Path, geometry, Image, mode: str = "RGB") -> np.ndarray:
    """Image `f` decoded to `mode` (RGB), resized and centre-cropped: uint8 (H, W, 3)."""
    try:
        with Image.open(f) as im:
            im = _eight_bit(im, Image).convert(mode)
    except (*_READ_ERRORS, Image.DecompressionBombError) as e:
        raise DistillError(f"Could not read image '{f}': {e}. Fix or remove the file.") from e
    return fit_image(im, geometry, f)


def _eight_bit(im, Image):
    """A 16- or 32-bit integer image (Pillow modes I;16*, I) as 8-bit L, keeping the high byte:
    Pillow's own convert clips every value above 255, so a 16-bit PNG would turn white."""
    if not im.mode.startswith("I"):
        return im
    a = np.asarray(im)
    top = 65535 if im.mode.startswith("I;16") or a.max(initial=0) <= 65535 else int(a.max())
    return Image.fromarray((a.astype(np.float64) * (255 / top)).round().astype(np.uint8), "L")


def fit_image(im, geometry, where) -> np.ndarray:
    """RGB PIL image `im` (from `where`, named in errors) resized and centre-cropped: uint8 (H, W, 3)."""
    short_side, size_hw, crop_hw = geometry
    im = _resize(im, short_side, size_hw, pillow().Resampling.BILINEAR)
    if crop_hw is not None:
        im = _centre_crop(im, crop_hw, where)
    return np.asarray(im, dtype=np.uint8)


def _class_files(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """The sorted class folder names under `root` and every (image file, class index)."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and _visible(p))
    if not classes:
        loose = [p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
        hint = f" It holds images directly ({loose[0]}, ...) but no class subfolders." if loose else ""
        raise DistillError(f"'{root}' has no class subfolders.{hint} {_FOLDER_LAYOUT}.")

    files: list[tuple[Path, int]] = []
    for c, name in enumerate(classes):
        imgs = sorted(
            p for p in (root / name).iterdir()
            if p.is_file() and _visible(p) and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not imgs:
            raise DistillError(
                f"Class folder '{root / name}' contains no images. {_FOLDER_LAYOUT}."
            )
        files += [(f, c) for f in imgs]
    return classes, files


def _target(wh: tuple[int, int], short_side: int | None, size_hw: tuple[int, int] | None):
    """(width, height) after resizing an image of size `wh`: the shorter side scaled to
    `short_side` (aspect kept), exactly `size_hw` (h, w), or unchanged."""
    w, h = wh
    if short_side is not None:
        s = short_side / min(w, h)
        return max(1, round(w * s)), max(1, round(h * s))
    if size_hw is not None:
        return size_hw[1], size_hw[0]
    return w, h


def _resize(im, short_side: int | None, size_hw: tuple[int, int] | None, resample):
    """The shorter side scaled to `short_side` (aspect kept), or exactly `size_hw` (h, w)."""
    target = _target(im.size, short_side, size_hw)
    return im if target == im.size else im.resize(target, resample)


def _centre_crop(im, crop_hw: tuple[int, int], f: Path):
    """The centre `crop_hw` (h, w) of image `im`, read from file `f`."""
    w, h = im.size
    ch, cw = crop_hw
    if ch > h or cw > w:
        raise DistillError(
            f"crop {ch}x{cw} is larger than image '{f}' ({h}x{w} after resizing); "
            f"choose a smaller crop or a larger size."
        )
    top, left = (h - ch) // 2, (w - cw) // 2
    return im.crop((left, top, left + cw, top + ch))
