"""Counter-based random draws: every draw is a pure function of (seed, epoch, sample index,
stream).

Draws come from a counter-based hash, not from a sequential RNG: the parameters of sample i in
epoch e are the same whatever batch it lands in, in whatever order, on whatever device.

Hash: each 32-bit word of (seed, epoch, index, stream) is absorbed in turn with
h <- lowbias32(((h ^ word) + 0x9E3779B9) mod 2^32). All arithmetic stays below 2^63 in int64,
so CPU and GPU give bit-identical draws.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

HASH = "lowbias32-chain-v1"
_M32 = 0xFFFFFFFF
_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B9
_INIT = 0x6A09E667


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
