"""CIFAR ResNets of the CRD / RepDistiller benchmark (resnet8 ... resnet110, resnet8x4, resnet32x4).

A 3x3 stem convolution, three stages of BasicBlocks (3x3-3x3, a 1x1 conv + BN shortcut where
the shape changes) with strides 1, 2, 2, global average pooling and a linear head. A depth-d
network has (d - 2) / 6 blocks per stage. Widths (stem, stage1, stage2, stage3) are
16-16-32-64, or 32-64-128-256 for the "x4" networks.

Parameter names match RepDistiller's `models/resnet.py` (and mdistiller's copy), so their
CIFAR-100 checkpoints load with `load_state_dict`. Differences from the reference, none of which
changes a 3x32x32 model: input channels come from `in_shape[0]`; the pooling is adaptive (the
reference's `AvgPool2d(8)` only fits 32x32 inputs); ReLUs are not in-place (so a stored hook
output is not overwritten); stages return a tensor, not the reference's `(out, preact)` pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import conv3x3, in_channels


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the (projected) input, then ReLU.

    Submodules: `conv1`, `bn1`, `relu`, `conv2`, `bn2` and, where the stride or width changes,
    `downsample` (`downsample.0` a 1x1 conv, `downsample.1` its BN).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(c_out),
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet for 32x32 images (He et al. 2016, section 4.2), as in RepDistiller.

    Hookable paths (shapes for a 3x32x32 input and widths w0-w1-w2-w3):

    - `conv1`, `bn1`, `relu`: the stem; `relu` gives (N, w0, 32, 32)
    - `layer1`: (N, w1, 32, 32); `layer2`: (N, w2, 16, 16); `layer3`: (N, w3, 8, 8) (each after
      its last block's ReLU; `layerK.i` is the i-th block)
    - `avgpool`: (N, w3, 1, 1)
    - `fc`: the logits

    `feature_paths` lists the reference's `is_feat` features (stem and the three stages).
    """

    feature_paths = ("relu", "layer1", "layer2", "layer3")
    hook_paths = ("conv1", "bn1", "relu", "layer1", "layer2", "layer3", "avgpool", "fc")

    def __init__(self, in_shape, num_classes: int, depth: int, widths=(16, 16, 32, 64)):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {depth}")
        if len(widths) != 4:
            raise ValueError(f"widths must give (stem, stage1, stage2, stage3), got {widths}")
        n = (depth - 2) // 6
        w0, w1, w2, w3 = (int(w) for w in widths)
        self.depth, self.widths = depth, (w0, w1, w2, w3)
        self.conv1 = conv3x3(in_channels(in_shape), w0)
        self.bn1 = nn.BatchNorm2d(w0)
        self.relu = nn.ReLU()
        self.layer1 = self._stage(w0, w1, n, stride=1)
        self.layer2 = self._stage(w1, w2, n, stride=2)
        self.layer3 = self._stage(w2, w3, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _stage(c_in: int, c_out: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(c_in, c_out, stride)]
        layers += [BasicBlock(c_out, c_out) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


_SMALL = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)


def resnet8(in_shape, num_classes: int, **kwargs) -> CifarResNet:
    return CifarResNet(in_shape, num_classes, depth=8, widths=_SMALL, **kwargs)


def resnet14(in_shape, num_classes: int, **kwargs) -> CifarResNet:
    return CifarResNet(in_shape, num_classes, depth=14, widths=_SMALL, **kwargs)


def resnet20(in_shape, num_classes: int, **kwargs) -> CifarResNet:
    return CifarResNet(in_shape, num_classes, depth=20, widths=_SMALL, **kwargs)


def resnet32(in_shape, num_classes: int, **kwargs) -> CifarResNet:
    return CifarResNet(in_shape, num_classes, depth=32, widths=_SMALL, **kwargs)


def resnet44(in_shape, num_classes: int, **kwargs) -> CifarResNet:
    return CifarResNet(in_shape, num_classes, depth=44, widths=_SMALL, **kwargs)


def resnet56(in_shape, num_classes: int, **kwargs) -> CifarResNet:
    return CifarResNet(in_shape, num_classes, depth=56, widths=_SMALL, **kwargs)


def resnet110(in_shape, num_classes: int, **kwargs) -> CifarResNet:
    return CifarResNet(in_shape, num_classes, depth=110, widths=_SMALL, **kwargs)


def resnet8x4(in_shape, num_classes: int, **kwargs) -> CifarResNet:
    return CifarResNet(in_shape, num_classes, depth=8, widths=_X4, **kwargs)


def resnet32x4(in_shape, num_classes: int, **kwargs) -> CifarResNet:
    return CifarResNet(in_shape, num_classes, depth=32, widths=_X4, **kwargs)


__all__ = [
    "BasicBlock",
    "CifarResNet",
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
]
