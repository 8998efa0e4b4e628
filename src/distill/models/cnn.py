"""A small convolutional network for small images (digits' 8x8, MNIST's 28x28)."""

from __future__ import annotations

from torch import nn


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class SmallCNN(nn.Module):
    """conv-BN-ReLU-pool blocks, global average pooling, dropout, a linear head.

    Hookable paths: `layer1`, `layer2`, ... (each block's output), `pool`, `head`.
    """

    def __init__(self, in_shape, num_classes: int, channels=(32, 64), dropout: float = 0.0):
        super().__init__()
        widths = [in_shape[0], *channels]
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True), start=1):
            self.add_module(f"layer{i}", conv_block(a, b))
        self.num_blocks = len(channels)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        for i in range(1, self.num_blocks + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.head(self.dropout(self.pool(x)))
