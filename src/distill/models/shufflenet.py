"""ShuffleNetV1 and ShuffleNetV2 for CIFAR, as in RepDistiller (`ShuffleV1`, `ShuffleV2`).

Both use a 1x1 stem conv to 24 channels (no stride, no max-pool, so a 32x32 input stays 32x32),
three stages that each halve the resolution (32 -> 16 -> 8 -> 4), global average pooling and a
linear classifier named `linear`.

- ShuffleNetV1 (Zhang et al. 2018), groups 3, stage widths 240, 480, 960, 4-8-4 units. A unit
  is 1x1 group conv-BN-ReLU, channel shuffle, 3x3 depthwise-BN-ReLU, 1x1 group conv-BN; the
  first unit of a stage concatenates a 3x3 average-pooled shortcut, the others add the input.
  The very first unit's first 1x1 conv is not grouped (its 24 input channels).
- ShuffleNetV2 (Ma et al. 2018), net size 1 by default: stage widths 116, 232, 464, then a 1x1
  conv-BN-ReLU to 1024. Each stage is a down-sampling unit followed by 3, 7, 3 basic units.

Parameter names match RepDistiller's `models/ShuffleNetv1.py` and `models/ShuffleNetv2.py`, so
their CIFAR-100 checkpoints load with `load_state_dict`. Differences from the reference, none of
which changes a 3x32x32 model: input channels come from `in_shape[0]`; the pooling is adaptive
(the reference's `avg_pool2d(out, 4)` only fits 32x32 inputs); the stem's ReLU (and V2's last
one) are modules (`relu`, `relu2`) so that they can be hooked; stages return a tensor, not the
reference's `(out, preact)` pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import in_channels


class ChannelShuffle(nn.Module):
    """[N, g*c, H, W] -> [N, c*g, H, W]: interleave the channels of the g groups."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        n, c, h, w = x.shape
        g = self.groups
        return x.reshape(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)


# ---------------------------------------------------------------------------- ShuffleNetV1


class ShuffleV1Unit(nn.Module):
    """ShuffleNetV1 bottleneck unit; stride 2 concatenates an average-pooled shortcut.

    Submodules: `conv1`, `bn1`, `shuffle1`, `conv2`, `bn2`, `conv3`, `bn3`, `shortcut`.
    `c_out` is the width of the residual branch (the stage width minus `c_in` when stride 2).
    """

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int, first_groups: int):
        super().__init__()
        mid = c_out // 4
        self.stride = stride
        self.conv1 = nn.Conv2d(c_in, mid, kernel_size=1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shuffle1 = ChannelShuffle(first_groups)
        self.conv2 = nn.Conv2d(
            mid, mid, kernel_size=3, stride=stride, padding=1, groups=mid, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, c_out, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride == 2:
            self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))

    def forward(self, x):
        out = self.shuffle1(F.relu(self.bn1(self.conv1(x))))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        return F.relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNetV1(nn.Module):
    """ShuffleNetV1 for 32x32 images.

    Hookable paths (shapes for a 3x32x32 input, widths 240-480-960):

    - `conv1`, `bn1`, `relu`: the stem; `relu` gives (N, 24, 32, 32)
    - `layer1`: (N, 240, 16, 16); `layer2`: (N, 480, 8, 8); `layer3`: (N, 960, 4, 4)
      (`layerK.i` is the i-th unit)
    - `avgpool`: (N, 960, 1, 1)
    - `linear`: the logits
    """

    feature_paths = ("relu", "layer1", "layer2", "layer3")
    hook_paths = ("conv1", "bn1", "relu", "layer1", "layer2", "layer3", "avgpool", "linear")

    def __init__(
        self, in_shape, num_classes: int, widths=(240, 480, 960), units=(4, 8, 4), groups: int = 3
    ):
        super().__init__()
        stem = 24
        self.conv1 = nn.Conv2d(in_channels(in_shape), stem, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        c_in = stem
        for k, (width, n) in enumerate(zip(widths, units, strict=True), start=1):
            stage = []
            for i in range(n):
                first_groups = 1 if (k == 1 and i == 0) else groups
                if i == 0:
                    stage.append(ShuffleV1Unit(c_in, width - c_in, 2, groups, first_groups))
                else:
                    stage.append(ShuffleV1Unit(width, width, 1, groups, first_groups))
            self.add_module(f"layer{k}", nn.Sequential(*stage))
            c_in = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(c_in, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))


# ---------------------------------------------------------------------------- ShuffleNetV2


class ShuffleV2Unit(nn.Module):
    """ShuffleNetV2 basic unit: split the channels in half, transform the second half
    (1x1-BN-ReLU, 3x3 depthwise-BN, 1x1-BN-ReLU), concatenate, shuffle.

    Submodules: `conv1`, `bn1`, `conv2`, `bn2`, `conv3`, `bn3`, `shuffle`.
    """

    def __init__(self, channels: int, split_ratio: float = 0.5):
        super().__init__()
        self.split_ratio = split_ratio
        c = int(channels * split_ratio)
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x):
        c = int(x.shape[1] * self.split_ratio)
        x1, x2 = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return self.shuffle(torch.cat([x1, out], 1))


class ShuffleV2DownUnit(nn.Module):
    """ShuffleNetV2 down-sampling unit: two stride-2 branches of c_out / 2 channels each.

    Left: `conv1` (3x3 depthwise)-`bn1`, `conv2` (1x1)-`bn2`-ReLU. Right: `conv3` (1x1)-`bn3`-ReLU,
    `conv4` (3x3 depthwise)-`bn4`, `conv5` (1x1)-`bn5`-ReLU. Then concatenate and `shuffle`.
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        mid = c_out // 2
        self.conv1 = nn.Conv2d(c_in, c_in, 3, stride=2, padding=1, groups=c_in, bias=False)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv2 = nn.Conv2d(c_in, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(c_in, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x):
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return self.shuffle(torch.cat([left, right], 1))


# net size -> (stage widths + last conv width, basic units per stage), as in the reference
SHUFFLENETV2_CONFIGS = {
    0.2: ((40, 80, 160, 512), (3, 3, 3)),
    0.3: ((40, 80, 160, 512), (3, 7, 3)),
    0.5: ((48, 96, 192, 1024), (3, 7, 3)),
    1: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
    2: ((224, 488, 976, 2048), (3, 7, 3)),
}


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 for 32x32 images.

    Hookable paths (shapes for a 3x32x32 input, net size 1):

    - `conv1`, `bn1`, `relu`: the stem; `relu` gives (N, 24, 32, 32)
    - `layer1`: (N, 116, 16, 16); `layer2`: (N, 232, 8, 8); `layer3`: (N, 464, 4, 4)
      (`layerK.0` is the down-sampling unit, `layerK.1`.. the basic units)
    - `conv2`, `bn2`, `relu2`: the last 1x1 conv-BN-ReLU, (N, 1024, 4, 4)
    - `avgpool`: (N, 1024, 1, 1)
    - `linear`: the logits
    """

    feature_paths = ("relu", "layer1", "layer2", "layer3")
    hook_paths = (
        "conv1", "bn1", "relu", "layer1", "layer2", "layer3",
        "conv2", "bn2", "relu2", "avgpool", "linear",
    )  # fmt: skip

    def __init__(self, in_shape, num_classes: int, net_size: float = 1):
        super().__init__()
        if net_size not in SHUFFLENETV2_CONFIGS:
            raise ValueError(
                f"net_size must be one of {sorted(SHUFFLENETV2_CONFIGS)}, got {net_size}"
            )
        widths, units = SHUFFLENETV2_CONFIGS[net_size]
        stem = 24
        self.conv1 = nn.Conv2d(in_channels(in_shape), stem, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        c_in = stem
        for k, (width, n) in enumerate(zip(widths[:3], units, strict=True), start=1):
            stage = [ShuffleV2DownUnit(c_in, width)] + [ShuffleV2Unit(width) for _ in range(n)]
            self.add_module(f"layer{k}", nn.Sequential(*stage))
            c_in = width
        self.conv2 = nn.Conv2d(c_in, widths[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.relu2 = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(widths[3], num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))


def shufflenetv1(in_shape, num_classes: int, **kwargs) -> ShuffleNetV1:
    """RepDistiller's `ShuffleV1`: groups 3, widths 240-480-960, 4-8-4 units."""
    return ShuffleNetV1(in_shape, num_classes, **kwargs)


def shufflenetv2(in_shape, num_classes: int, **kwargs) -> ShuffleNetV2:
    """RepDistiller's `ShuffleV2`: net size 1 (widths 116-232-464, 1024), 3-7-3 basic units."""
    return ShuffleNetV2(in_shape, num_classes, **kwargs)


__all__ = [
    "SHUFFLENETV2_CONFIGS",
    "ChannelShuffle",
    "ShuffleNetV1",
    "ShuffleNetV2",
    "ShuffleV1Unit",
    "ShuffleV2DownUnit",
    "ShuffleV2Unit",
    "shufflenetv1",
    "shufflenetv2",
]
