"""Image-folder datasets: one subfolder per class, read with Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DistillError
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
    class_names list[str]).
    """
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as e:  # pragma: no cover - Pillow is a dependency
        raise DistillError("Reading image folders needs Pillow: pip install pillow.") from e

    root = Path(path)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise DistillError(f"Data path '{root}' {what}. {_FOLDER_LAYOUT}.")
    size_hw = None if size is None or isinstance(size, int) else _pair(size, "size")
    short_side = size if isinstance(size, int) else None
    if short_side is not None and short_side < 1:
        raise DistillError(f"size must be positive; got {size!r}.")
    crop_hw = None if crop is None else _pair(crop, "crop")
    classes, files = _class_files(root)

    arrays, first = [], None
    for f, _ in files:
        try:
            with Image.open(f) as im:
                im = im.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
                Image.DecompressionBombError) as e:
            raise DistillError(f"Could not read image '{f}': {e}. Fix or remove the file.") from e
        im = _resize(im, short_side, size_hw, Image.Resampling.BILINEAR)
        if crop_hw is not None:
            im = _centre_crop(im, crop_hw, f)
        a = np.asarray(im, dtype=np.uint8)
        if first is None:
            first = (f, a.shape)
        elif a.shape != first[1]:
            raise DistillError(
                f"Image '{f}' is {a.shape[0]}x{a.shape[1]} but '{first[0]}' is "
                f"{first[1][0]}x{first[1][1]}; set data.size and/or data.crop so that every "
                f"image ends up the same size."
            )
        arrays.append(a)
    x = np.stack(arrays).transpose(0, 3, 1, 2).copy()
    y = np.array([c for _, c in files], dtype=np.int64)
    return x, y, classes


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


def _resize(im, short_side: int | None, size_hw: tuple[int, int] | None, resample):
    """The shorter side scaled to `short_side` (aspect kept), or exactly `size_hw` (h, w)."""
    if short_side is not None:
        w, h = im.size
        s = short_side / min(w, h)
        target = (max(1, round(w * s)), max(1, round(h * s)))
        if target != im.size:
            im = im.resize(target, resample)
    elif size_hw is not None and im.size != (size_hw[1], size_hw[0]):
        im = im.resize((size_hw[1], size_hw[0]), resample)
    return im


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
