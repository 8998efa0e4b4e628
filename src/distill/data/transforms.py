"""The transforms an `Augment` pipeline chains: Normalize, RandomCrop, HorizontalFlip, Cutout.

Each works on a whole (B, C, H, W) batch at once, with explicit per-sample parameters drawn
from `distill.data.draws`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DistillError, short
from .draws import _Rand


def _pair(v, what: str) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        t = (int(v), int(v))
    else:
        t = tuple(int(a) for a in v)
        if len(t) != 2:
            raise DistillError(f"{what} must be an int or (height, width); got {short(v)}.")
    if min(t) < 1:
        raise DistillError(f"{what} must be positive; got {short(v)}.")
    return t


def _check_batch(x: torch.Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"augmentation expects a batch shaped (B, C, H, W); got {tuple(x.shape)}")


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------


class Transform:
    """One step of an `Augment` pipeline.

    A random transform names its per-sample parameters in `params`, draws parameter j from
    hash stream `stream + j` in `draw` (j < len(params) <= 16), and maps them to a view index
    in [0, num_views) (`num_views` None: not enumerable).
    `_bind` is called by `Augment` with the input (H, W) and returns the output (H, W).
    """

    name = "transform"
    params: tuple[str, ...] = ()

    def _bind(self, hw: tuple[int, int]) -> tuple[int, int]:
        return hw

    @property
    def num_views(self) -> int | None:
        return 1

    def draw(self, rand: _Rand, stream: int) -> dict[str, torch.Tensor]:
        return {}

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def apply_eval(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic evaluation-time version (identity for flips and cutout)."""
        return x

    def view_id(self, params: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return None  # deterministic: a single view

    def params_for_view(self, view: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def spec(self) -> dict:
        return {"name": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.spec().items() if k != "name")
        return f"{type(self).__name__}({args})"


class Normalize(Transform):
    """(x * scale - mean) / std per channel; integer input becomes float32.

    With uint8 images and statistics in [0, 1] units pass scale=1/255.
    """

    name = "normalize"

    def __init__(self, mean: Sequence[float], std: Sequence[float], scale: float = 1.0):
        self.mean = [float(m) for m in np.atleast_1d(mean)]
        self.std = [float(s) for s in np.atleast_1d(std)]
        self.scale = float(scale)
        if len(self.mean) != len(self.std):
            raise DistillError(
                f"Normalize: mean has {len(self.mean)} values but std has {len(self.std)}."
            )
        if any(not (s > 0 and math.isfinite(s)) for s in self.std):
            raise DistillError(f"Normalize: every std must be positive; got {self.std}.")
        self._tensors: dict = {}

    def _stats(self, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and std as (1, C, 1, 1) tensors, made once per dtype and device: building them
        every batch would copy host to device (and sync a GPU) on every step."""
        key = (dtype, device)
        if key not in self._tensors:
            self._tensors[key] = tuple(
                torch.tensor(v, dtype=dtype, device=device).view(1, -1, 1, 1) for v in (self.mean, self.std)
            )
        return self._tensors[key]

    def apply(self, x, params=None):
        _check_batch(x)
        c = x.shape[1]
        if len(self.mean) not in (1, c):
            raise ValueError(f"Normalize has {len(self.mean)} channel(s); the batch has {c}")
        dtype = x.dtype if x.dtype.is_floating_point else torch.float32
        mean, std = self._stats(dtype, x.device)
        x = x.to(dtype)
        if self.scale != 1.0:
            x = x * self.scale
        return (x - mean) / std

    def apply_eval(self, x):
        return self.apply(x)

    def spec(self):
        return {"name": self.name, "mean": self.mean, "std": self.std, "scale": self.scale}


class RandomCrop(Transform):
    """Zero-pad by `padding` on every side, then crop `size` at offsets (dy, dx).

    On an input of (H, W), dy is uniform in [0, H + 2*padding - size_h], dx likewise; with
    H == size that is [0, 2*padding]. Evaluation takes the centre crop.
    """

    name = "random_crop"
    params = ("dy", "dx")

    def __init__(self, size, padding: int = 0, fill: float = 0):
        self.size = _pair(size, "RandomCrop size")
        self.padding = int(padding)
        if self.padding < 0:
            raise DistillError(f"RandomCrop padding must be >= 0; got {padding}.")
        self.fill = fill
        self._ranges: tuple[int, int] | None = None

    def _bind(self, hw):
        ry = hw[0] + 2 * self.padding - self.size[0] + 1
        rx = hw[1] + 2 * self.padding - self.size[1] + 1
        if ry < 1 or rx < 1:
            raise DistillError(
                f"RandomCrop of {self.size[0]}x{self.size[1]} with padding {self.padding} does "
                f"not fit a {hw[0]}x{hw[1]} input."
            )
        self._ranges = (ry, rx)
        return self.size

    def _need_bound(self):
        if self._ranges is None:
            raise RuntimeError("RandomCrop is not bound to an input size; use it in an Augment")
        return self._ranges

    @property
    def num_views(self):
        ry, rx = self._need_bound()
        return ry * rx

    def draw(self, rand, stream):
        ry, rx = self._need_bound()
        return {"dy": rand.integers(stream, ry), "dx": rand.integers(stream + 1, rx)}

    def apply(self, x, params):
        _check_batch(x)
        p = self.padding
        if p:
            x = F.pad(x, (p, p, p, p), mode="constant", value=self.fill)
        h, w = self.size
        dev = x.device
        # windows[b, c, i, j] is the h x w crop at offset (i, j): a view, no copy. One
        # advanced index picks each sample's window (3x faster than gathering pixels).
        windows = x.unfold(2, h, 1).unfold(3, w, 1)  # (B, C, ry, rx, h, w)
        bi = torch.arange(len(x), device=dev)
        return windows[bi, :, params["dy"].to(dev), params["dx"].to(dev)]

    def apply_eval(self, x):
        ry = x.shape[-2] + 2 * self.padding - self.size[0] + 1
        rx = x.shape[-1] + 2 * self.padding - self.size[1] + 1
        n = len(x)
        full = torch.full((n,), 0, dtype=torch.long, device=x.device)
        return self.apply(x, {"dy": full + (ry - 1) // 2, "dx": full + (rx - 1) // 2})

    def view_id(self, params):
        _, rx = self._need_bound()
        return params["dy"] * rx + params["dx"]

    def params_for_view(self, view):
        _, rx = self._need_bound()
        return {"dy": view // rx, "dx": view % rx}

    def spec(self):
        return {"name": self.name, "size": list(self.size), "padding": self.padding,
                "fill": self.fill}


class HorizontalFlip(Transform):
    """Mirror left-right with probability p; parameter `flip` in {0, 1}."""

    name = "horizontal_flip"
    params = ("flip",)

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise DistillError(f"HorizontalFlip p must be in [0, 1]; got {p}.")
        self.p = float(p)

    @property
    def _random(self):
        return 0.0 < self.p < 1.0

    @property
    def num_views(self):
        return 2 if self._random else 1

    def draw(self, rand, stream):
        return {"flip": rand.bernoulli(stream, self.p)}

    def apply(self, x, params):
        _check_batch(x)
        flip = params["flip"].to(x.device).view(-1, 1, 1, 1).bool()
        return torch.where(flip, x.flip(-1), x)

    def view_id(self, params):
        f = params["flip"]
        return f if self._random else torch.zeros_like(f)

    def params_for_view(self, view):
        if self._random:
            return {"flip": view.clone()}
        return {"flip": torch.full_like(view, int(self.p >= 1.0))}

    def spec(self):
        return {"name": self.name, "p": self.p}


class Cutout(Transform):
    """Fill a `length` x `length` square (clipped at the borders) centred at (cy, cx), drawn
    uniformly over the image, with `fill` (DeVries & Taylor, 2017). Not enumerable: num_views
    is None."""

    name = "cutout"
    params = ("cy", "cx")

    def __init__(self, length: int, fill: float = 0.0):
        self.length = int(length)
        if self.length < 1:
            raise DistillError(f"Cutout length must be >= 1; got {length}.")
        self.fill = fill
        self._hw: tuple[int, int] | None = None

    def _bind(self, hw):
        self._hw = tuple(hw)
        return hw

    @property
    def num_views(self):
        return None

    def draw(self, rand, stream):
        if self._hw is None:
            raise RuntimeError("Cutout is not bound to an input size; use it in an Augment")
        h, w = self._hw
        return {"cy": rand.integers(stream, h), "cx": rand.integers(stream + 1, w)}

    def apply(self, x, params):
        _check_batch(x)
        b, _, h, w = x.shape
        dev = x.device
        top = params["cy"].to(dev).view(b, 1) - self.length // 2
        left = params["cx"].to(dev).view(b, 1) - self.length // 2
        ys = torch.arange(h, device=dev)
        xs = torch.arange(w, device=dev)
        in_y = (ys >= top) & (ys < top + self.length)  # (B, H)
        in_x = (xs >= left) & (xs < left + self.length)  # (B, W)
        mask = in_y[:, None, :, None] & in_x[:, None, None, :]
        return x.masked_fill(mask, self.fill)

    def view_id(self, params):
        raise ValueError("Cutout views are not enumerable (num_views is None)")

    def params_for_view(self, view):
        raise ValueError("Cutout views are not enumerable (num_views is None)")

    def spec(self):
        return {"name": self.name, "length": self.length, "fill": self.fill}


TRANSFORMS: dict[str, type[Transform]] = {
    t.name: t for t in (Normalize, RandomCrop, HorizontalFlip, Cutout)
}
