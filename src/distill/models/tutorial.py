"""The teacher and student CNNs of PyTorch's knowledge-distillation tutorial (CIFAR-10).

`DeepNN` (teacher) and `LightNN` (student) reproduce the tutorial's architectures layer for
layer, so that for 3x32x32 inputs and 10 classes they have the tutorial's parameter counts
(1,186,986 and 267,738) and the same `state_dict` keys (`features.0.weight`, ...,
`classifier.3.bias`): weights saved from the tutorial's classes load into these ones.

Differences from the tutorial, none of which changes a 3x32x32 model: the input channels come
from `in_shape[0]`, the first linear layer's width is computed from `in_shape` (the tutorial
hard-codes 2048 and 1024, i.e. 32x32 inputs), and the dropout probability is an argument
(default 0.1, the tutorial's).
"""

from __future__ import annotations

import torch
from torch import nn


def _check_shape(in_shape) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise ValueError(f"in_shape must be (channels, height, width), got {tuple(in_shape)}")
    c, h, w = (int(v) for v in in_shape)
    if h < 4 or w < 4:
        raise ValueError(
            f"the tutorial's CNNs pool twice by 2: inputs must be at least 4x4, got {h}x{w}"
        )
    return c, h, w


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)


class DeepNN(nn.Module):
    """The tutorial's teacher: four 3x3 convs (128, 64, 64, 32) with two max-pools, then an MLP.

    Hookable paths (shapes for a 3x32x32 input):

    - `features.4`: after the first max-pool, (N, 64, 16, 16)
    - `features`: the convolutional feature map, (N, 32, 8, 8); the tutorial's regressor and
      cosine-loss variants distil this one
    - `classifier.1`: the hidden layer after its ReLU, (N, 512)
    - `classifier`: the logits (`classifier.3` is the last linear layer)
    """

    feature_paths = ("features.4", "features")
    hook_paths = ("features.4", "features", "classifier.1", "classifier")

    def __init__(self, in_shape, num_classes: int, dropout: float = 0.1):
        super().__init__()
        c, h, w = _check_shape(in_shape)
        self.features = nn.Sequential(
            _conv(c, 128),
            nn.ReLU(),
            _conv(128, 64),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            _conv(64, 64),
            nn.ReLU(),
            _conv(64, 32),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(32 * (h // 4) * (w // 4), 512),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(512, num_classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class LightNN(nn.Module):
    """The tutorial's student: two 3x3 convs (16, 16), each followed by a max-pool, then an MLP.

    Hookable paths (shapes for a 3x32x32 input):

    - `features.2`: after the first max-pool, (N, 16, 16, 16)
    - `features`: the convolutional feature map, (N, 16, 8, 8)
    - `classifier.1`: the hidden layer after its ReLU, (N, 256)
    - `classifier`: the logits (`classifier.3` is the last linear layer)
    """

    feature_paths = ("features.2", "features")
    hook_paths = ("features.2", "features", "classifier.1", "classifier")

    def __init__(self, in_shape, num_classes: int, dropout: float = 0.1):
        super().__init__()
        c, h, w = _check_shape(in_shape)
        self.features = nn.Sequential(
            _conv(c, 16),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            _conv(16, 16),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * (h // 4) * (w // 4), 256),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(256, num_classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def deepnn(in_shape, num_classes: int, **kwargs) -> DeepNN:
    """The tutorial's teacher (1,186,986 parameters for 3x32x32 inputs and 10 classes)."""
    return DeepNN(in_shape, num_classes, **kwargs)


def lightnn(in_shape, num_classes: int, **kwargs) -> LightNN:
    """The tutorial's student (267,738 parameters for 3x32x32 inputs and 10 classes)."""
    return LightNN(in_shape, num_classes, **kwargs)


__all__ = ["DeepNN", "LightNN", "deepnn", "lightnn"]
