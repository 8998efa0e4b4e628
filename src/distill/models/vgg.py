"""VGG with batch norm for CIFAR, RepDistiller's variant (vgg8, vgg11, vgg13, vgg16, vgg19).

Five blocks of 3x3 convs (with bias) + BN, widths 64, 128, 256, 512, 512, no fully connected
layers but a single linear classifier on the globally average-pooled 512 channels. Each block's
`nn.Sequential` ends with a BN, not a ReLU: the ReLU after block i is the module `relu{i}`, so
`block{i}` gives the pre-activation feature and `relu{i}` the activated one. Blocks 0-2 are
each followed by a 2x2 max-pool (`pool0`..`pool2`); `pool3` is used only for inputs at least 64
pixels high (the reference uses it for exactly 64: a 32x32 input reaches block 4 at 4x4);
`pool4` is the global average pooling.

Parameter names match RepDistiller's `models/vgg.py` (`vgg*_bn`), so its CIFAR-100
checkpoints load with `load_state_dict`. Input channels come from `in_shape[0]`.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import in_channels

CONFIGS = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": (
        (64, 64),
        (128, 128),
        (256, 256, 256, 256),
        (512, 512, 512, 512),
        (512, 512, 512, 512),
    ),
}



def _block(c_in: int, widths, batch_norm: bool) -> nn.Sequential:
    """[conv3x3, (BN), ReLU] per width, without the last ReLU (that one is `relu{i}`)."""
    layers: list[nn.Module] = []
    for w in widths:
        layers.append(nn.Conv2d(c_in, w, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(w))
        layers.append(nn.ReLU())
        c_in = w
    return nn.Sequential(*layers[:-1])


class CifarVGG(nn.Module):
    """VGG for small images.

    Hookable paths (shapes for a 3x32x32 input):

    - `block0`..`block4`: pre-activation block outputs, at 32, 16, 8, 4, 4 pixels, with 64,
      128, 256, 512, 512 channels; `block{i}.{j}` their layers
    - `relu0`..`relu4`: the same after the ReLU (the reference's `is_feat` features)
    - `pool0`..`pool3`: the max-pools (`pool3` runs only for inputs at least 64 pixels high,
      so it is not in `hook_paths`); `pool4`: global average pooling, (N, 512, 1, 1)
    - `classifier`: the logits
    """

    feature_paths = ("relu0", "relu1", "relu2", "relu3", "relu4")
    hook_paths = (
        *(f"block{i}" for i in range(5)),
        *(f"relu{i}" for i in range(5)),
        "pool0",
        "pool1",
        "pool2",
        "pool4",
        "classifier",
    )

    def __init__(self, in_shape, num_classes: int, cfg, batch_norm: bool = True):
        super().__init__()
        if len(cfg) != 5:
            raise ValueError(f"cfg must give the widths of 5 blocks, got {cfg}")
        c_in = in_channels(in_shape)
        for i, widths in enumerate(cfg):
            self.add_module(f"block{i}", _block(c_in, widths, batch_norm))
            self.add_module(f"relu{i}", nn.ReLU())
            c_in = widths[-1]
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        large = x.shape[2] >= 64
        x = self.pool0(self.relu0(self.block0(x)))
        x = self.pool1(self.relu1(self.block1(x)))
        x = self.pool2(self.relu2(self.block2(x)))
        x = self.relu3(self.block3(x))
        if large:
            x = self.pool3(x)
        x = self.relu4(self.block4(x))
        return self.classifier(torch.flatten(self.pool4(x), 1))


def vgg8(in_shape, num_classes: int, **kwargs) -> CifarVGG:
    return CifarVGG(in_shape, num_classes, CONFIGS["vgg8"], **kwargs)


def vgg11(in_shape, num_classes: int, **kwargs) -> CifarVGG:
    return CifarVGG(in_shape, num_classes, CONFIGS["vgg11"], **kwargs)


def vgg13(in_shape, num_classes: int, **kwargs) -> CifarVGG:
    return CifarVGG(in_shape, num_classes, CONFIGS["vgg13"], **kwargs)


def vgg16(in_shape, num_classes: int, **kwargs) -> CifarVGG:
    return CifarVGG(in_shape, num_classes, CONFIGS["vgg16"], **kwargs)


def vgg19(in_shape, num_classes: int, **kwargs) -> CifarVGG:
    return CifarVGG(in_shape, num_classes, CONFIGS["vgg19"], **kwargs)


__all__ = ["CONFIGS", "CifarVGG", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19"]
