"""Image-folder datasets: one subfolder per class, read with Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DistillError
from .memory import check_fits, check_side
from .transforms import _pair

IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm",
)

_FOLDER_LAYOUT = (
    "An image folder dataset expects one subfolder per class (class index = position of the "
    "folder name in sorted order), each holding image files (" + ", ".join(IMAGE_EXTENSIONS)
    + ")"
)




def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def read_image_folder(path, size=None, crop=None):
    """Read a class-per-subfolder image dataset with Pillow, converted to RGB.

    `size`: an int resizes the shorter side to `size` keeping the aspect ratio; (h, w) resizes
    to exactly that. `crop` (int or (h, w)) then takes a centre crop. Without either, every
    image must already have the same size. Returns (x uint8 (N, 3, H, W), y int64 (N,),
    class_names list[str]). The decoded size is worked out from the first file's header and
    checked against the memory budget before any image is decoded.
    """
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow is a dependency
        raise DistillError("Reading image folders needs Pillow: pip install pillow.") from e

    root = Path(path)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise DistillError(f"Data path '{root}' {what}. {_FOLDER_LAYOUT}.")
    for value, name in ((size, "size"), (crop, "crop")):
        if value is not None:
            check_side(value, name)
    size_hw = None if size is None or isinstance(size, int) else _pair(size, "size")
    short_side = size if isinstance(size, int) else None
    crop_hw = None if crop is None else _pair(crop, "crop")
    classes, files = _class_files(root)

    geometry = (short_side, size_hw, crop_hw)
    first = files[0][0]
    h, w = _planned(_header_size(first, Image), geometry, first)
    check_fits(len(files) * 3 * h * w, f"The {len(files)} images under '{root}' ({h}x{w} RGB)",
               "Set a smaller data.size (and data.crop), or use a folder with fewer images.")
    x = np.empty((len(files), 3, h, w), dtype=np.uint8)
    for i, (f, _) in enumerate(files):
        planned = _planned(_header_size(f, Image), geometry, f)
        if planned != (h, w):
            raise DistillError(
                f"Image '{f}' is {planned[0]}x{planned[1]} but '{first}' is {h}x{w}; set "
                f"data.size and/or data.crop so that every image ends up the same size."
            )
        x[i] = _decode(f, geometry, Image).transpose(2, 0, 1)
    y = np.array([c for _, c in files], dtype=np.int64)
    return x, y, classes


def _header_size(f: Path, Image) -> tuple[int, int]:
    """(width, height) of image file `f`, read from its header: nothing is decoded."""
    try:
        with Image.open(f) as im:
            return im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DistillError(f"Could not read image '{f}': {e}. Fix or remove the file.") from e


def _planned(wh: tuple[int, int], geometry, f: Path) -> tuple[int, int]:
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


def _decode(f: Path, geometry, Image) -> np.ndarray:
    """Image `f` decoded to RGB, resized and centre-cropped: uint8 (H, W, 3)."""
    short_side, size_hw, crop_hw = geometry
    try:
        with Image.open(f) as im:
            im = im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DistillError(f"Could not read image '{f}': {e}. Fix or remove the file.") from e
    im = _resize(im, short_side, size_hw, Image.Resampling.BILINEAR)
    if crop_hw is not None:
        im = _centre_crop(im, crop_hw, f)
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
