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

The hash lives in `distill.data.draws`, the transforms in `distill.data.transforms`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import partial

import numpy as np
import torch

from ..errors import DistillError, short
from .draws import HASH, _Rand, counter_bits
from .samples import Samples
from .transforms import (
    TRANSFORMS,
    Cutout,
    HorizontalFlip,
    Normalize,
    RandomCrop,
    Transform,
    _check_batch,
    _pair,
)

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

_STREAMS_PER_TRANSFORM = 16


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
            raise DistillError(f"Augment spec uses hash {short(spec['hash'])}; this build has {HASH}.")
        return cls([_transform_from_dict(d) for d in spec["transforms"]], spec["image_size"])

    def __repr__(self) -> str:
        ts = ", ".join(map(repr, self.transforms))
        return f"Augment([{ts}], image_size={self.image_size})"


def _transform_from_dict(d: dict, size=None) -> Transform:
    d = dict(d)
    name = d.pop("name", None)
    if name not in TRANSFORMS:
        raise DistillError(
            f"Unknown augmentation {short(name)}. Available: {', '.join(TRANSFORMS)}."
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
                raise DistillError(f"Each augmentation must be a mapping with a 'name'; got {short(d)}.")
            t = _transform_from_dict(d, size=hw)
            ts.append(t)
            if isinstance(t, RandomCrop):
                hw = t.size
    else:
        raise DistillError(
            f"data.augment must be 'none', 'flip', 'crop_flip' or a list of transforms; "
            f"got {short(value)}."
        )
    if normalize is not None:
        ts.append(normalize)
    return Augment(ts, size) if ts else None


def _channel_sums(part, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel sum and sum of squares of a chunk: exact int64 for integer data (so the
    statistics are the same in any order, chunking or process), float64 otherwise."""
    if isinstance(part, torch.Tensor):
        part = part.detach().cpu().numpy()
    dtype = np.int64 if np.issubdtype(part.dtype, np.integer) or part.dtype == np.bool_ else np.float64
    part = np.asarray(part, dtype=dtype).reshape(len(part), channels, -1)
    return part.sum(axis=(0, 2)), np.square(part, out=part).sum(axis=(0, 2))


def channel_stats(x, scale: float = 1.0, chunk: int = 4096, max_elements: int = 1 << 22,
                  workers: int = 0) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of (N, C, ...) data (numpy, torch or `Samples`), times `scale`,
    from per-chunk sums of at most `chunk` samples and `max_elements` values (32 MiB of int64 or
    float64): the peak is one chunk, not a copy of the data. Integer data (images) are summed
    exactly, so a `Samples` is read in storage order (sequential on disk) by `workers`
    processes that each reduce their chunks, and the numbers never depend on either."""
    n = len(x)
    if n == 0:
        raise DistillError("Cannot compute channel statistics of an empty dataset.")
    shape = x.sample_shape if isinstance(x, Samples) else tuple(x.shape[1:])
    c = shape[0]
    per_sample = max(int(np.prod(shape)), 1)
    rows = max(1, min(chunk, max_elements // per_sample))
    sums = partial(_channel_sums, channels=c)
    if isinstance(x, Samples):
        exact = np.issubdtype(x.dtype, np.integer)
        parts = (x.in_storage_order() if exact else x).map_chunks(rows, sums, workers)
    else:
        parts = (sums(x[i : i + rows]) for i in range(0, n, rows))
    s, s2 = 0, 0
    for part_sum, part_squares in parts:
        s, s2 = s + part_sum, s2 + part_squares
    count = n * (per_sample // c)
    mean = s / count * scale
    std = np.sqrt(np.maximum(s2 / count * scale**2 - mean**2, 0.0))
    std[std == 0] = 1.0
    return mean.tolist(), std.tolist()
