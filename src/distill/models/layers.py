"""Small building blocks shared by the CIFAR zoo models."""

from __future__ import annotations

from torch import nn


def in_channels(in_shape) -> int:
    """The channel count of a (channels, height, width) input shape."""
    if len(in_shape) != 3:
        raise ValueError(f"in_shape must be (channels, height, width), got {tuple(in_shape)}")
    return int(in_shape[0])


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)
