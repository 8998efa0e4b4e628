"""scikit-learn's handwritten digits (1,797 8x8 images, 10 classes), shipped offline."""

from __future__ import annotations

import numpy as np


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 (N, 1, 8, 8) in [0, 16], labels as int64 (N,)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32)[:, None], d.target.astype(np.int64)
