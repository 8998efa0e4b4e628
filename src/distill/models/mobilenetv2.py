"""MobileNetV2 for CIFAR as in RepDistiller (`mobile_half`: expansion T=6, width multiplier 0.5).

RepDistiller's variant (from "Knowledge Distillation via Route Constrained Optimization") of
Sandler et al. 2018: a stride-2 3x3 stem, seven stages of inverted residual blocks
(t, c, n, s) = (1, 16, 1, 1), (T, 24, 2, 1), (T, 32, 3, 2), (T, 64, 4, 2), (T, 96, 3, 1),
(T, 160, 3, 2), (T, 320, 1, 1) with the widths c scaled by the multiplier, a 1x1 conv to 1280
channels (not scaled down for multipliers <= 1), average pooling and a linear classifier. Unlike
the ImageNet MobileNetV2 it uses ReLU, not ReLU6, and the t = 1 block keeps its (1x1) expansion
conv. A 32x32 input ends at 2x2.

Parameter names match RepDistiller's `models/mobilenetv2.py` (`conv1.0.weight`,
`blocks.3.1.conv.4.weight`, `classifier.0.weight`, ...), so its CIFAR-100 checkpoints load with
`load_state_dict`. Differences from the reference, none of which changes a 3x32x32 model: input
channels come from `in_shape[0]`, the pooling is adaptive (the reference's
`AvgPool2d(2, ceil_mode=True)` only fits 32x32 inputs), ReLUs are not in-place.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import in_channels


def _conv_bn_relu(c_in: int, c_out: int, kernel_size: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    """`conv`: 1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 project-BN (indices 0..7).

    Adds the input when the stride is 1 and the width is unchanged.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, expand_ratio: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = c_in * expand_ratio
        self.use_residual = stride == 1 and c_in == c_out
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, c_out, 1, 1, 0, bias=False),
            nn.BatchNorm2d(c_out),
        )

    def forward(self, x):
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2CIFAR(nn.Module):
    """MobileNetV2 with expansion `expand_ratio` (T) and width multiplier `width_mult`.

    Hookable paths (shapes for a 3x32x32 input, T=6, multiplier 0.5):

    - `conv1`: the stem (conv-BN-ReLU), (N, 16, 16, 16)
    - `blocks.0` .. `blocks.6`: the seven stages (`blocks.i.j` their blocks), with 8, 12, 16,
      32, 48, 80, 160 channels at 16, 16, 8, 4, 4, 2, 2 pixels; the reference's `is_feat`
      features are `conv1`, `blocks.1`, `blocks.2`, `blocks.4`, `blocks.6`
    - `conv2`: the 1x1 conv-BN-ReLU to 1280 channels, (N, 1280, 2, 2)
    - `avgpool`: (N, 1280, 1, 1)
    - `classifier`: the logits (`classifier.0` is its linear layer)
    """

    feature_paths = ("conv1", "blocks.1", "blocks.2", "blocks.4", "blocks.6")
    hook_paths = (
        "conv1",
        *(f"blocks.{i}" for i in range(7)),
        "conv2",
        "avgpool",
        "classifier",
    )

    def __init__(self, in_shape, num_classes: int, expand_ratio: int = 6, width_mult: float = 0.5):
        super().__init__()
        settings = [  # t, c, n, s
            (1, 16, 1, 1),
            (expand_ratio, 24, 2, 1),
            (expand_ratio, 32, 3, 2),
            (expand_ratio, 64, 4, 2),
            (expand_ratio, 96, 3, 1),
            (expand_ratio, 160, 3, 2),
            (expand_ratio, 320, 1, 1),
        ]
        c_in = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(in_channels(in_shape), c_in, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in settings:
            c_out = int(c * width_mult)
            stage = []
            for i in range(n):
                stage.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t))
                c_in = c_out
            self.blocks.append(nn.Sequential(*stage))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(c_in, self.last_channel, 1, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        x = self.conv2(x)
        return self.classifier(torch.flatten(self.avgpool(x), 1))


def mobilenetv2(in_shape, num_classes: int, **kwargs) -> MobileNetV2CIFAR:
    """RepDistiller's `mobile_half` (T=6, width 0.5); `expand_ratio`/`width_mult` override."""
    kwargs = {"expand_ratio": 6, "width_mult": 0.5, **kwargs}
    return MobileNetV2CIFAR(in_shape, num_classes, **kwargs)


__all__ = ["InvertedResidual", "MobileNetV2CIFAR", "mobilenetv2"]
