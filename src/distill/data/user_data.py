"""Your own data: `data.name: package.module:function`, called with `data.kwargs`.

The function returns a `torch.utils.data.Dataset` (map-style: len and integer indexing) whose
items are `(input, label)` pairs, or a dict {"train": ds, "val": ds, "test": ds} (train
required; a missing split is carved out of train, stratified). An input is a tensor or a numpy
array, every item the same shape and dtype: uint8 (C, H, W) are images, anything else is
served as float32 features. A label is an integer class index, or -1 for an unlabelled sample.

Labels are read from the dataset's `targets` or `labels` instance attribute when it has one
(torchvision's datasets do; a list, array or tensor, checked against item 0's label), and
otherwise in one pass over the items that keeps only the labels. Inputs are read when a loader
asks for them (`DatasetSamples.take`), in the streaming loader's workers or, for the memory
loader, all at once up front.

Importing the module runs it, like teacher.model=package.module:function: `distill run` of
your own config imports it (running it is the consent); a run folder naming it is read back
(eval, report, export, --resume) only with --trust-code (distill.trust). The module is found
the way model code paths are: the current directory, PYTHONPATH, installed packages.
"""

from __future__ import annotations

import hashlib
import inspect
import json

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from ..errors import DistillError, clip, short
from ..naming import resolve
from ..terms import CODE_PATH
from .checks import check_finite, check_pool_labels, check_used_classes, input_kind
from .samples import Samples, Source

SPLITS = ("train", "val", "test")
_IMAGES_HINT = "Return uint8 tensors (e.g. torchvision's transforms.PILToTensor())"


def _as_array(value, where: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    hint = (" Convert it, e.g. with torchvision's transforms.PILToTensor()."
            if type(value).__module__.startswith("PIL") else " Return a torch.Tensor or a numpy array.")
    raise DistillError(f"{where} is a {type(value).__name__}, not a tensor or numpy array.{hint}")


def _item(ds, i: int, name: str):
    """ds[i], or a DistillError naming the item when the user's __getitem__ raises."""
    try:
        return ds[i]
    except DistillError:
        raise
    except Exception as e:  # the user's code: any error is theirs, said as such
        raise DistillError(f"Item {i} of {name} raised {type(e).__name__}: {e}. Fix the dataset's "
                           f"__getitem__ (items 0..len-1 must each return (input, label)).") from None


def _pair(item, i: int, name: str) -> tuple:
    if not isinstance(item, tuple | list) or len(item) != 2:
        kind = f"a {len(item)}-item {type(item).__name__}" if isinstance(item, tuple | list) else f"a {type(item).__name__}"
        raise DistillError(f"Item {i} of {name} is {kind}, not an (input, label) pair. Make "
                           "__getitem__ return (input, label), with label -1 for an unlabelled sample.")
    return item[0], item[1]


def _label(value, i: int, name: str):
    """Item i's label as a Python number (check_pool_labels checks it is an integer)."""
    a = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if a.ndim != 0 or a.dtype.kind not in "biuf":
        raise DistillError(f"Item {i} of {name} has label {short(value, 80)}; a label is one integer "
                           "class index (or -1 for unlabelled), not a one-hot vector or a string.")
    return a.item()


class DatasetSamples(Samples):
    """The inputs of a user's map-style Dataset, read item by item when `take` asks for rows."""

    def __init__(self, ds: Dataset, labels: np.ndarray, name: str, origin: str):
        self.ds, self.labels, self.name, self.origin = ds, labels, name, origin
        first = _as_array(_pair(ds[0], 0, name)[0], f"The input of item 0 of {name}")
        self.first_dtype, self.sample_shape = first.dtype, tuple(first.shape)
        self.dtype = input_kind(first.dtype, self.sample_shape, f"The inputs of {name}", _IMAGES_HINT)

    def take_rows(self, idx):
        out = np.empty((len(idx), *self.sample_shape), dtype=self.dtype)
        for k, i in enumerate(idx.tolist()):
            x = _as_array(_pair(_item(self.ds, i, self.name), i, self.name)[0], f"The input of item {i} of {self.name}")
            if tuple(x.shape) != self.sample_shape or x.dtype != self.first_dtype:
                raise DistillError(
                    f"Item {i} of {self.name} has an input of shape {tuple(x.shape)} and dtype {x.dtype}, "
                    f"but item 0's is {self.sample_shape}, {self.first_dtype}; every input must have the "
                    "same shape and dtype. Resize or pad them in the dataset (or in its transform)."
                )
            out[k] = x
        check_finite(out, idx, f"The inputs of {self.name}")
        return out

    def fingerprint(self) -> str:
        """sha256 of the function, its kwargs, the split, the length, the input shape and the
        labels. The inputs are not hashed (that would read the whole dataset): data that change
        behind the same function, arguments and labels go unnoticed."""
        h = hashlib.sha256(f"{self.origin}|{len(self)}|{self.sample_shape}|{self.first_dtype}".encode())
        h.update(self.labels.tobytes())
        return h.hexdigest()


def _call(name: str, kwargs: dict):
    """What the function `name` returns for `kwargs`."""
    if not CODE_PATH.fullmatch(name):
        raise DistillError(f"data.name '{clip(name, 100)}' is not a code path: write "
                           "package.module:function, e.g. mypkg.data:make.")
    fn = resolve(name, {}, "dataset function", "package.module:function", DistillError)
    if not callable(fn):
        raise DistillError(f"data.name {name} is a {type(fn).__name__}, not a function returning a Dataset.")
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as e:
        raise DistillError(f"data.kwargs {short(kwargs)} do not fit {name}{inspect.signature(fn)}: {e}. "
                           "Set data.kwargs.<argument>=value for its arguments.") from None
    except ValueError:  # no signature (a builtin): let the call say
        pass
    try:
        return fn(**kwargs)
    except (TypeError, ValueError, OSError) as e:
        raise DistillError(f"Could not build the dataset {name} with data.kwargs {short(kwargs)}: "
                           f"{type(e).__name__}: {clip(str(e), 300)}") from e


def _as_splits(result, name: str) -> dict:
    parts = result if isinstance(result, dict) else {"train": result}
    unknown = [k for k in parts if k not in SPLITS]
    if unknown or "train" not in parts:
        raise DistillError(f"{name} returned a dict with keys {sorted(map(str, parts))}; a dict of splits "
                           "has 'train' and optionally 'val' and 'test' (missing ones are carved from train).")
    for split, ds in parts.items():
        where = name if not isinstance(result, dict) else f"{name}['{split}']"
        if isinstance(ds, IterableDataset) or not isinstance(ds, Dataset):
            kind = "an IterableDataset" if isinstance(ds, IterableDataset) else f"a {type(ds).__name__}"
            raise DistillError(f"{where} returned {kind}; it must return a map-style torch.utils.data.Dataset "
                               "(len and ds[i] -> (input, label)) or a dict of them, e.g. TensorDataset(x, y).")
        try:
            n = len(ds)
        except TypeError:
            raise DistillError(f"{where} returned a {type(ds).__name__} without __len__; a Dataset "
                               "needs one.") from None
        if n == 0:
            raise DistillError(f"The dataset is empty: {where} returned a {type(ds).__name__} with no items.")
    return parts


def _attribute_labels(ds: Dataset):
    """The `targets` or `labels` instance attribute of `ds`, or None."""
    try:
        attrs = vars(ds)
    except TypeError:  # __slots__ only
        return None
    value = attrs.get("targets", attrs.get("labels"))
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


def dataset_labels(ds: Dataset, name: str) -> np.ndarray:
    """Every label of `ds`: its targets/labels attribute, or one pass over the items."""
    given = _attribute_labels(ds)
    if given is not None:
        y = check_pool_labels(np.asarray(given), f"the targets/labels of {name}")
        if len(y) != len(ds):
            raise DistillError(f"{name} has {len(ds)} items but its targets/labels attribute {len(y)}.")
        first = _label(_pair(ds[0], 0, name)[1], 0, name)
        if first != y[0]:
            raise DistillError(f"Item 0 of {name} has label {first} but its targets/labels attribute "
                               f"says {int(y[0])}; they must agree (distill reads the attribute).")
        return y
    found = [_label(_pair(_item(ds, i, name), i, name)[1], i, name) for i in range(len(ds))]
    return check_pool_labels(np.asarray(found), f"the labels of {name}")


def open_user(cfg):
    """The Source of `data.name: package.module:function` (see the module docstring)."""
    name, kwargs = cfg.name, dict(cfg.kwargs)
    parts = _as_splits(_call(name, kwargs), name)
    origin = f"{name}|{json.dumps(kwargs, sort_keys=True, default=str)}"
    samples = {}
    for split, ds in parts.items():
        where = name if len(parts) == 1 else f"{name}['{split}']"
        samples[split] = DatasetSamples(ds, dataset_labels(ds, where), where, f"{origin}|{split}")
        base = samples["train"]
        if (samples[split].sample_shape, samples[split].dtype) != (base.sample_shape, base.dtype):
            raise DistillError(f"{where} has inputs shaped {samples[split].sample_shape} but the train "
                               f"split's are {base.sample_shape}; every split needs the same shape.")
    check_used_classes([s.labels for s in samples.values()], f"the labels of {name}")
    return Source(samples["train"], samples.get("val"), samples.get("test"), lazy=True)
