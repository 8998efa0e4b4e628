"""What a dataset will take in memory, checked before anything is decoded.

A config can ask for more than the machine has (data.size=100000 on a folder of small images
asks for a 100000-pixel side per image); the readers compute the decoded size from the file
headers first and refuse, naming the size and the budget, instead of being killed half-way.
"""

from __future__ import annotations

import math
import os
import zlib

from ..errors import DistillError, clip
from ..stores import format_bytes

MAX_SIDE = 4096  # the largest data.size / data.crop side: far above any image classifier's input
CSV_BYTES_PER_VALUE = 36  # while parsed: a Python float (24) and its list slot (8), then float32
COPIES = 2  # the decoded array, plus the train / validation / test copies build_data takes


def data_memory_budget() -> int:
    """Half of physical RAM: the data share the host with the models and the teacher cache."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def check_fits(nbytes: int, what: str, fix: str, copies: int = COPIES) -> None:
    """Raise when `what` (e.g. "The 40 images under 'imgs' (224x224 RGB)"), `nbytes` once
    decoded, does not fit the budget with the `copies` of it the data pipeline makes."""
    needed, budget = copies * int(nbytes), data_memory_budget()
    if needed > budget:
        copied = (f", {format_bytes(needed)} with the copies for the train/validation/test splits"
                  if copies > 1 else "")
        raise DistillError(
            f"{what}: {format_bytes(nbytes)} decoded{copied}, more than the "
            f"{format_bytes(budget)} budget for data (half of this machine's memory). {fix}"
        )


def check_side(value, name: str) -> None:
    """data.size / data.crop: each side an integer from 1 to MAX_SIDE."""
    sides = value if isinstance(value, (list, tuple)) else [value]
    for v in sides:
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_SIDE:
            raise DistillError(
                f"data.{name} must be a whole number of pixels from 1 to {MAX_SIDE} (or [height, "
                f"width] of them); got {str(v)[:50]}. Images this large do not fit in memory "
                "as a dataset; choose e.g. 32, 64 or 224."
            )


def check_npz(path) -> None:
    """Refuse an .npz archive whose arrays, by their .npy headers, would not fit in memory
    (a compressed archive can inflate a few kilobytes to gigabytes). Unreadable archives pass:
    the reader names what is wrong with them."""
    import zipfile

    from numpy.lib import format as npy

    total, shapes = 0, []
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                with zf.open(name) as f:
                    version = npy.read_magic(f)
                    read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
                    shape, _, dtype = read(f)
                total += math.prod(shape) * dtype.itemsize
                shapes.append(f"{name.removesuffix('.npy')} {tuple(shape)}")
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error):
        return
    check_fits(total, f"The arrays in '{path}' ({clip(', '.join(shapes), 200)})",
               "Check that it is the file you meant, or save fewer or smaller samples.")


def check_csv(path, delimiter: str = ",") -> None:
    """Refuse a CSV file whose values, parsed (a Python float each, then float32), would not
    fit in memory; the values are counted from the delimiters without keeping the text."""
    values = 0
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                values += block.count(delimiter.encode()) + block.count(b"\n")
        size = os.path.getsize(path)
    except OSError:
        return
    check_fits(size + CSV_BYTES_PER_VALUE * values, f"'{path}' ({format_bytes(size)}, about "
               f"{values} values)", "Use a smaller file, or save the data as .npz (4 bytes a value).")
