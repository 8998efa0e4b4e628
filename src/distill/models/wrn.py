"""Wide residual networks for CIFAR (Zagoruyko & Komodakis 2016), as in RepDistiller.

WRN-d-k: a 3x3 stem conv (16 channels), three stages of (d - 4) / 6 pre-activation blocks
(BN-ReLU-conv3x3-BN-ReLU-conv3x3, a 1x1 conv shortcut where the width changes) of widths 16k,
32k, 64k with strides 1, 2, 2, then BN-ReLU, global average pooling and a linear head.

The stages are named `block1`, `block2`, `block3` as in RepDistiller's `models/wrn.py`, whose
parameter names these match (`block1.layer.0.conv1.weight`, `block1.layer.0.convShortcut.weight`,
...), so its CIFAR-100 checkpoints load with `load_state_dict`. Differences from the reference,
none of which changes a 3x32x32 model: input channels come from `in_shape[0]`, the pooling is
adaptive (the reference's `avg_pool2d(out, 8)` only fits 32x32 inputs), ReLUs are not in-place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import conv3x3, in_channels


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, plus the shortcut.

    Where the width changes, the shortcut is `convShortcut` (a 1x1 conv) applied to the
    pre-activated input, as in the reference; otherwise it is the identity.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU()
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.conv2 = conv3x3(c_out, c_out)
        self.drop_rate = drop_rate
        self.equal_in_out = c_in == c_out
        self.convShortcut = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False)

    def forward(self, x):
        act = self.relu1(self.bn1(x))
        shortcut = x if self.equal_in_out else self.convShortcut(act)
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(out)


class WideStage(nn.Module):
    """`layer`: the stage's blocks in an `nn.Sequential` (the reference's `NetworkBlock`)."""

    def __init__(self, blocks: int, c_in: int, c_out: int, stride: int, drop_rate: float):
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1, drop_rate)
                for i in range(blocks)
            )
        )

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen_factor for 32x32 images.

    Hookable paths (shapes for a 3x32x32 input and widen factor k):

    - `conv1`: the stem, (N, 16, 32, 32)
    - `block1`: (N, 16k, 32, 32); `block2`: (N, 32k, 16, 16); `block3`: (N, 64k, 8, 8). These
      are pre-activation outputs (the next BN-ReLU comes in the next block, or in `bn1`/`relu`);
      `blockK.layer.i` is the i-th block of stage K
    - `bn1`, `relu`: the final BN-ReLU, (N, 64k, 8, 8)
    - `avgpool`: (N, 64k, 1, 1)
    - `fc`: the logits

    `feature_paths` lists the reference's `is_feat` features (stem and the three stages).
    """

    feature_paths = ("conv1", "block1", "block2", "block3")
    hook_paths = ("conv1", "block1", "block2", "block3", "bn1", "relu", "avgpool", "fc")

    def __init__(
        self, in_shape, num_classes: int, depth: int, widen_factor: int, drop_rate: float = 0.0
    ):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 with n >= 1 (10, 16, 22, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = conv3x3(in_channels(in_shape), widths[0])
        self.block1 = WideStage(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = WideStage(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = WideStage(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def wrn_16_1(in_shape, num_classes: int, **kwargs) -> WideResNet:
    return WideResNet(in_shape, num_classes, depth=16, widen_factor=1, **kwargs)


def wrn_16_2(in_shape, num_classes: int, **kwargs) -> WideResNet:
    return WideResNet(in_shape, num_classes, depth=16, widen_factor=2, **kwargs)


def wrn_40_1(in_shape, num_classes: int, **kwargs) -> WideResNet:
    return WideResNet(in_shape, num_classes, depth=40, widen_factor=1, **kwargs)


def wrn_40_2(in_shape, num_classes: int, **kwargs) -> WideResNet:
    return WideResNet(in_shape, num_classes, depth=40, widen_factor=2, **kwargs)


__all__ = ["WideBlock", "WideResNet", "WideStage", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"]
