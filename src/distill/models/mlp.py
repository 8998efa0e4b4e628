"""Multi-layer perceptrons of any widths (Hinton et al. 2015 used 784-1200-1200-10)."""

from __future__ import annotations

import math

from torch import nn


class MLP(nn.Module):
    """Flatten -> [Linear, ReLU, Dropout] per hidden width -> Linear head.

    Hookable paths: `hidden.0`, `hidden.1`, ... (each block's output) and `head`.
    """

    def __init__(self, in_shape, num_classes: int, hidden=(256,), dropout: float = 0.0):
        super().__init__()
        widths = [math.prod(in_shape), *hidden]
        self.flatten = nn.Flatten()
        self.hidden = nn.ModuleList(
            nn.Sequential(nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout))
            for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        x = self.flatten(x)
        for block in self.hidden:
            x = block(x)
        return self.head(x)
