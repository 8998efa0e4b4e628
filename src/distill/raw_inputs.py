"""What a classification run's model takes as RAW input, and the graph part that makes it
distill's input: the record `distill export` writes as preprocess.json (and summary.json
keeps under data.preprocess), and the wrapper module exported around the student.

distill's loaders (distill.data) prepare inputs in two ways, and the record says which:

- "image": uint8 (C, H, W) images (folder, hf Image columns, CIFAR, MNIST, uint8 npz/npy, a
  user's uint8 Dataset). Files are decoded with Pillow, converted to RGB (1-channel data: L),
  resized (data.size: an int scales the shorter side, keeping the aspect ratio; [h, w] exactly;
  bilinear) and centre-cropped (data.crop) - outside the graph, by `predict` or the deployer.
  Inside the graph, as distill.data.transforms.Normalize does it: float32(x) * scale
  (scale = float32(1/255)), then (x - mean) / std per channel, with the training split's
  channel statistics.
- "features": everything else (digits, csv, float npz/npy/hf/user data), standardized per
  feature as rows are read: inside the graph (float32(x) - mean) / std, mean and std of shape
  `features.shape` from the training split.

The record is computed from the rebuilt Data and config (so it is exact, and a run folder from
before these fields existed exports the same way); the mean and std are data.stats, the numbers
the loaders normalize with.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import Data
from .errors import DistillError
from .models.outputs import LogitsOnly

DECODED_RGB = ("folder", "hf", "cifar10", "cifar100")  # sources whose images distill decodes as RGB
GRAPH_IMAGE = "y = (float32(x) * scale - mean) / std, per channel (mean, std: (1, C, 1, 1))"
GRAPH_FEATURES = "y = (float32(x) - mean) / std, per feature (mean, std: shaped like one input)"


def class_names(data: Data) -> list[str]:
    """Names of classes 0..K-1: the source's (folder names, an HF ClassLabel's or string labels'
    names), or the class indices as strings when the source names none (digits, CSV, npz)."""
    k, names = data.num_classes, data.class_names
    if names is not None and len(names) >= k:
        return [str(n) for n in names[:k]]
    return [str(i) for i in range(k)]


def preprocess_record(cfg, data: Data) -> dict | None:
    """The raw-input record of a classification run's data (`cfg`: its DataConfig): see the
    module docstring. JSON-able; the same numbers the loaders use. None for data these two
    kinds do not describe (token ids: the text task records its own)."""
    stats, shape = data.stats, [int(s) for s in data.in_shape]
    if stats.get("kind") not in ("per_channel", "per_feature"):
        return None
    if stats["kind"] == "per_channel":
        c, h, w = shape
        order = "L" if c == 1 else "RGB" if c == 3 and cfg.name in DECODED_RGB else "as stored"
        resizes = cfg.name in ("folder", "hf")  # data.size / data.crop apply to decoded image files only
        image = {
            "channels": c, "height": h, "width": w, "layout": "NCHW",
            "channel_order": order,  # of the arrays the run trained on
            "mode": {1: "L", 3: "RGB"}.get(c),  # what an image file is converted to (Pillow), None: no files
            "size": cfg.size if resizes else None,  # data.size: int = shorter side (aspect kept), [h, w] = exactly
            "crop": cfg.crop if resizes else None,  # data.crop: centre crop after resizing
            "resample": "bilinear (Pillow)",
            "steps": "outside the graph: decode with Pillow, convert to mode, resize to size, centre-crop "
                     "to crop, uint8 HWC -> CHW, stack to NCHW",
        }
        normalize = {"per": "channel", "scale": float(np.float32(stats["scale"])), "mean": list(stats["mean"]),
                     "std": list(stats["std"]), "graph": GRAPH_IMAGE}
        return {"kind": "image", "image": image, "normalize": normalize, "num_classes": data.num_classes}
    features = {"shape": shape, "count": math.prod(shape), "columns": _csv_columns(cfg),
                "label_column": cfg.label_column if cfg.name in ("csv", "hf") else None}
    normalize = {"per": "feature", "scale": 1.0, "mean": list(stats["mean"]), "std": list(stats["std"]),
                 "graph": GRAPH_FEATURES}
    return {"kind": "features", "features": features, "normalize": normalize, "num_classes": data.num_classes}


def _csv_columns(cfg) -> list[str] | None:
    """The feature columns of a CSV run, in file order (the header minus the label column)."""
    if cfg.name != "csv" or not cfg.path:
        return None
    try:
        with open(Path(cfg.path).expanduser(), newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
    except OSError:
        return None
    return [h.strip() for h in header if h.strip() != cfg.label_column]


def input_dtype(record: dict) -> np.dtype:
    """The graph input's dtype: uint8 images, float32 features."""
    return np.dtype(np.uint8) if record["kind"] == "image" else np.dtype(np.float32)


def as_raw(x: np.ndarray, record: dict) -> np.ndarray:
    """Rows as the source read them, in the graph input's dtype (features as float32)."""
    return np.ascontiguousarray(x, dtype=input_dtype(record))


class RawImages(nn.Module):
    """uint8 (B, C, H, W) images -> logits: distill.data.transforms.Normalize inside the graph,
    in its order and with its float32 constants."""

    def __init__(self, model: nn.Module, normalize: dict):
        super().__init__()
        self.model = LogitsOnly(model)
        self.register_buffer("scale", torch.tensor(normalize["scale"], dtype=torch.float32))
        self.register_buffer("mean", torch.tensor(normalize["mean"], dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(normalize["std"], dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32) * self.scale
        return self.model((x - self.mean) / self.std)


class RawFeatures(nn.Module):
    """float32 (B, *shape) features -> logits: the per-feature standardization inside the graph."""

    def __init__(self, model: nn.Module, normalize: dict, shape):
        super().__init__()
        self.model = LogitsOnly(model)
        view = (1, *shape)
        self.register_buffer("mean", torch.tensor(normalize["mean"], dtype=torch.float32).view(view))
        self.register_buffer("std", torch.tensor(normalize["std"], dtype=torch.float32).view(view))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x.to(torch.float32) - self.mean) / self.std)


def raw_input_model(model: nn.Module, record: dict) -> nn.Module:
    """The student behind the graph part of `record`, in eval mode."""
    if record["kind"] == "image":
        return RawImages(model, record["normalize"]).eval()
    if record["kind"] == "features":
        return RawFeatures(model, record["normalize"], record["features"]["shape"]).eval()
    raise DistillError(f"A classification run's inputs are images or features, not {record['kind']!r}.")
