"""Batch augmentation in plain torch whose every random draw is a pure function of
(seed, epoch, sample index).

Draws come from a counter-based hash, not from a sequential RNG: the parameters of sample i in
epoch e are the same whatever batch it lands in, in whatever order, on whatever device. The
parameters are explicit, so a teacher-output cache can key an augmented view exactly:

    aug = Augment([RandomCrop(32, padding=4), HorizontalFlip()], image_size=32)
    params = aug.draw(seed, epoch, index)     # {"dy", "dx", "flip"}: LongTensors (B,)
    xb = aug.apply(x_uint8_batch, params)     # vectorized over the batch
    view = aug.view_id(params)                # in [0, aug.num_views) = [0, 162)
    same = aug.params_for_view(view)          # the inverse: re-create any view

`num_views` is None when the views cannot be enumerated (Cutout); `view_id` then raises and a
cache should key on (seed, epoch, index) instead. `spec()` is a JSON-able description for
fingerprinting; it excludes the seed, which the caller passes to `draw`.

Hash: each 32-bit word of (seed, epoch, index, stream) is absorbed in turn with
h <- lowbias32(((h ^ word) + 0x9E3779B9) mod 2^32). All arithmetic stays below 2^63 in int64,
so CPU and GPU give bit-identical draws.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DistillError

__all__ = [
    "HASH",
    "Augment",
    "Cutout",
    "HorizontalFlip",
    "Normalize",
    "RandomCrop",
    "Transform",
    "build_augment",
    "channel_stats",
    "counter_bits",
]

HASH = "lowbias32-chain-v1"
_M32 = 0xFFFFFFFF
_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B9
_INIT = 0x6A09E667
_STREAMS_PER_TRANSFORM = 16


def _mul32(a, c: int):
    """(a * c) mod 2^32 for 0 <= a, c < 2^32 without ever exceeding 2^49 (no int64 overflow).
    Works on Python ints and int64 tensors alike."""
    return (a * (c & 0xFFFF) + ((a * (c >> 16)) & 0xFFFF) * 0x10000) & _M32


def _mix32(x):
    """Chris Wellons' lowbias32 integer hash (a bijection on 32-bit words)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _absorb(h, word):
    return _mix32(((h ^ word) + _GOLDEN) & _M32)


def _prefix(seed: int, epoch: int) -> int:
    h = _INIT
    for v in (int(seed) & _M64, int(epoch) & _M64):
        h = _absorb(h, v & _M32)
        h = _absorb(h, v >> 32)
    return h


def _as_index(index) -> torch.Tensor:
    index = torch.as_tensor(index)
    if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        raise TypeError(f"index must be an integer tensor, got {index.dtype}")
    return index.long().reshape(-1)


def counter_bits(seed: int, epoch: int, index, stream: int) -> torch.Tensor:
    """Uniform 32-bit words (as int64 in [0, 2^32)) for each sample index: a pure function of
    (seed, epoch, index, stream), on index's device."""
    return _Rand(seed, epoch, index).bits(stream)


class _Rand:
    """Per-sample random numbers for one (seed, epoch) and a batch of sample indices."""

    def __init__(self, seed: int, epoch: int, index, streams: Sequence[int] = ()):
        idx = _as_index(index)
        h = torch.full_like(idx, _prefix(seed, epoch))
        h = _absorb(h, idx & _M32)
        self._h = _absorb(h, (idx >> 32) & _M32)
        # Hash the streams known in advance in one broadcast pass (fewer kernel launches).
        self._cols = {int(s): j for j, s in enumerate(streams)}
        if streams:
            st = torch.tensor([int(s) & _M32 for s in streams], device=idx.device)
            self._table = _absorb(self._h[:, None], st[None, :])

    def bits(self, stream: int) -> torch.Tensor:
        j = self._cols.get(int(stream))
        if j is not None:
            return self._table[:, j]
        return _absorb(self._h, int(stream) & _M32)

    def integers(self, stream: int, n: int) -> torch.Tensor:
        """Uniform integers in [0, n) (multiply-shift; n < 2^31)."""
        return (self.bits(stream) * int(n)) >> 32

    def bernoulli(self, stream: int, p: float) -> torch.Tensor:
        """1 with probability p (exactly p up to 2^-32), else 0."""
        return (self.bits(stream) < round(p * 2**32)).long()


def _pair(v, what: str) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        t = (int(v), int(v))
    else:
        t = tuple(int(a) for a in v)
        if len(t) != 2:
            raise DistillError(f"{what} must be an int or (height, width); got {v!r}.")
    if min(t) < 1:
        raise DistillError(f"{what} must be positive; got {v!r}.")
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

    def apply(self, x, params=None):
        _check_batch(x)
        c = x.shape[1]
        if len(self.mean) not in (1, c):
            raise ValueError(f"Normalize has {len(self.mean)} channel(s); the batch has {c}")
        dtype = x.dtype if x.dtype.is_floating_point else torch.float32
        mean = torch.tensor(self.mean, dtype=dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=dtype, device=x.device).view(1, -1, 1, 1)
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


# --------------------------------------------------------------------------------------------
# Pipeline
# --------------------------------------------------------------------------------------------


class Augment:
    """A sequence of transforms for (B, C, H, W) batches of `image_size` (int or (h, w)).

    Transform i draws from hash streams [16 i, 16 i + 16), so its draws depend only on
    (seed, epoch, index, i). The transforms are copied; the originals are left unbound.
    """

    def __init__(self, transforms: Sequence[Transform], image_size):
        self.image_size = _pair(image_size, "image_size")
        self.transforms = [copy.copy(t) for t in transforms]
        hw = self.image_size
        seen: dict[str, str] = {}
        for t in self.transforms:
            if not isinstance(t, Transform):
                raise TypeError(f"not a Transform: {t!r}")
            for k in t.params:
                if k in seen:
                    raise DistillError(
                        f"Augment: {t.name} and {seen[k]} both draw '{k}'; use each random "
                        f"transform at most once."
                    )
                seen[k] = t.name
            hw = t._bind(hw)
        self.out_size = hw
        # transform i draws its j-th parameter from stream 16 i + j
        self._streams = [
            i * _STREAMS_PER_TRANSFORM + j
            for i, t in enumerate(self.transforms)
            for j in range(len(t.params))
        ]

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(k for t in self.transforms for k in t.params)

    @property
    def is_random(self) -> bool:
        return bool(self.param_names)

    @property
    def num_views(self) -> int | None:
        """How many distinct views one sample has; None when not enumerable."""
        n = 1
        for t in self.transforms:
            v = t.num_views
            if v is None:
                return None
            n *= v
        return n

    def draw(self, seed: int, epoch: int, index) -> dict[str, torch.Tensor]:
        """Per-sample parameters: LongTensors (B,) for the B indices, on index's device."""
        rand = _Rand(seed, epoch, index, self._streams)
        out: dict[str, torch.Tensor] = {}
        for i, t in enumerate(self.transforms):
            out.update(t.draw(rand, i * _STREAMS_PER_TRANSFORM))
        return out

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Augment a batch with the given parameters (from `draw` or `params_for_view`)."""
        _check_batch(x)
        if tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(
                f"Augment was built for {self.image_size[0]}x{self.image_size[1]} images; "
                f"the batch has {x.shape[-2]}x{x.shape[-1]}"
            )
        missing = [k for k in self.param_names if k not in params]
        if missing:
            raise KeyError(f"missing augmentation parameters: {missing}")
        for t in self.transforms:
            x = t.apply(x, params)
        return x

    def __call__(self, x: torch.Tensor, seed: int, epoch: int, index) -> torch.Tensor:
        return self.apply(x, self.draw(seed, epoch, index))

    def apply_eval(self, x: torch.Tensor) -> torch.Tensor:
        """The evaluation transform: centre crop, no flip or cutout, normalize."""
        _check_batch(x)
        for t in self.transforms:
            x = t.apply_eval(x)
        return x

    def view_id(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mixed-radix id of each sample's view, in [0, num_views): for crop + flip it is
        (dy * range_x + dx) * 2 + flip. Raises ValueError when num_views is None."""
        if self.num_views is None:
            raise ValueError(
                "this augmentation has no enumerable views (num_views is None); key by "
                "(seed, epoch, index) instead"
            )
        vid = None
        for t in self.transforms:
            v = t.view_id(params)
            if v is None:
                continue
            vid = v.clone() if vid is None else vid * t.num_views + v
        if vid is None:  # no random transform: every sample has the single view 0
            raise ValueError("this augmentation has no random parameters; every view id is 0")
        return vid

    def params_for_view(self, view) -> dict[str, torch.Tensor]:
        """The parameters of view id(s) `view`: the inverse of `view_id`."""
        if self.num_views is None:
            raise ValueError("this augmentation has no enumerable views (num_views is None)")
        view = torch.as_tensor(view).long()
        out: dict[str, torch.Tensor] = {}
        for t in reversed(self.transforms):
            n = t.num_views
            if not t.params:
                continue
            out.update(t.params_for_view(view % n))
            view = view // n
        return out

    def spec(self) -> dict:
        """JSON-able description (the seed is not part of it)."""
        return {
            "hash": HASH,
            "image_size": list(self.image_size),
            "transforms": [t.spec() for t in self.transforms],
        }

    @classmethod
    def from_spec(cls, spec: dict) -> Augment:
        if spec.get("hash", HASH) != HASH:
            raise DistillError(f"Augment spec uses hash {spec['hash']!r}; this build has {HASH}.")
        return cls([_transform_from_dict(d) for d in spec["transforms"]], spec["image_size"])

    def __repr__(self) -> str:
        ts = ", ".join(map(repr, self.transforms))
        return f"Augment([{ts}], image_size={self.image_size})"


def _transform_from_dict(d: dict, size=None) -> Transform:
    d = dict(d)
    name = d.pop("name", None)
    if name not in TRANSFORMS:
        raise DistillError(
            f"Unknown augmentation {name!r}. Available: {', '.join(TRANSFORMS)}."
        )
    if name == "random_crop" and "size" not in d and size is not None:
        d["size"] = list(size)
    try:
        return TRANSFORMS[name](**d)
    except TypeError as e:
        raise DistillError(f"Bad arguments for augmentation '{name}': {e}.") from e


def build_augment(value, image_size, normalize: Normalize | None = None) -> Augment | None:
    """Build an Augment from a config value.

    `value`: None / "none" (no augmentation); "flip"; "crop_flip" (RandomCrop(image_size,
    padding=4) + HorizontalFlip()); or a list of dicts such as
    [{"name": "random_crop", "padding": 4}, {"name": "horizontal_flip"}, {"name": "cutout",
    "length": 16}] (random_crop's size defaults to the image size). `normalize`, when given, is
    appended last. Returns None when there is nothing to do.
    """
    size = _pair(image_size, "image_size")
    if value is None or value == "none":
        ts: list[Transform] = []
    elif value == "flip":
        ts = [HorizontalFlip()]
    elif value == "crop_flip":
        ts = [RandomCrop(size, padding=4), HorizontalFlip()]
    elif isinstance(value, (list, tuple)):
        ts = []
        hw = size
        for d in value:
            if not isinstance(d, dict):
                raise DistillError(f"Each augmentation must be a mapping with a 'name'; got {d!r}.")
            t = _transform_from_dict(d, size=hw)
            ts.append(t)
            if isinstance(t, RandomCrop):
                hw = t.size
    else:
        raise DistillError(
            f"data.augment must be 'none', 'flip', 'crop_flip' or a list of transforms; "
            f"got {value!r}."
        )
    if normalize is not None:
        ts.append(normalize)
    return Augment(ts, size) if ts else None


def channel_stats(x, scale: float = 1.0, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of (N, C, ...) data (numpy or torch), times `scale`, computed
    in float64 chunk by chunk (so uint8 datasets are never copied to float whole)."""
    n = len(x)
    if n == 0:
        raise DistillError("Cannot compute channel statistics of an empty dataset.")
    c = x.shape[1]
    s = np.zeros(c)
    s2 = np.zeros(c)
    count = 0
    for i in range(0, n, chunk):
        part = x[i : i + chunk]
        if isinstance(part, torch.Tensor):
            part = part.detach().cpu().numpy()
        part = np.asarray(part, dtype=np.float64).reshape(len(part), c, -1) * scale
        s += part.sum(axis=(0, 2))
        s2 += (part**2).sum(axis=(0, 2))
        count += part.shape[0] * part.shape[2]
    mean = s / count
    std = np.sqrt(np.maximum(s2 / count - mean**2, 0.0))
    std[std == 0] = 1.0
    return mean.tolist(), std.tolist()
