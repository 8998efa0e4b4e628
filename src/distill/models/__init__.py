"""Model zoo: `create_model(name, num_classes, in_shape, **kwargs)`.

A name is a registry key, a `package.module:function` path to the user's own builder, or a
local folder saved by Hugging Face's `save_pretrained` (an image classifier, loaded with
AutoModelForImageClassification; see models.hf). A builder is called with `num_classes=...`
and `in_shape=...` where its signature takes them (timm- or torchvision-style builders that
take only `num_classes`, or neither, get what they accept) and `**kwargs`.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import DistillError
from ..naming import resolve
from .cnn import SmallCNN
from .hf import IMAGE, hf_image, is_hf_folder, load_pretrained
from .mlp import MLP
from .zoo import REFERENCE_NUM_CLASSES as ZOO_NUM_CLASSES
from .zoo import ZOO

MODELS = {"mlp": MLP, "cnn": SmallCNN, **ZOO, "hf_image": hf_image}


def _resolve(name: str):
    return resolve(name, MODELS, "model", "package.module:function", DistillError)


def create_model(name: str, num_classes: int, in_shape, *, trust_checkpoint: bool = False,
                 **kwargs) -> nn.Module:
    """The model `name` builds for `num_classes` classes and inputs of shape `in_shape` (the
    module docstring). `trust_checkpoint` lets a save_pretrained folder with only pickled
    weights load (unpickling can run code)."""
    if name not in MODELS and is_hf_folder(name):
        return _pretrained(name, num_classes, kwargs, trust_checkpoint)
    builder = _resolve(name)
    params = inspect.signature(builder).parameters
    has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in kwargs if k not in params and not has_var_kw]
    if unknown:
        valid = [k for k in params if k not in ("in_shape", "num_classes", "self")]
        raise DistillError(
            f"Model '{name}' has no argument(s) {unknown}. Its arguments: {', '.join(valid)}."
        )
    given = {"in_shape": tuple(in_shape), "num_classes": num_classes}  # where the builder takes them
    given = {k: v for k, v in given.items() if k in params or has_var_kw}
    try:
        model = builder(**given, **kwargs)
    except (TypeError, ValueError) as e:
        raise DistillError(f"Could not build model '{name}' with {kwargs}: {e}") from e
    except RuntimeError as e:  # torch: a negative size, or more memory than there is
        raise DistillError(
            f"Could not build model '{name}' with {kwargs}: {str(e).splitlines()[0]}. "
            "Check its sizes: a model this large does not fit in memory; use fewer or narrower layers."
        ) from None
    if not isinstance(model, nn.Module):
        raise DistillError(
            f"Model '{name}' returned a {type(model).__name__}, not a torch.nn.Module. A model "
            "function must return the model it builds (an nn.Module)."
        )
    return model


def _pretrained(folder: str, num_classes: int, kwargs: dict, trust_checkpoint: bool) -> nn.Module:
    """An image classifier saved with save_pretrained, its head checked against the data's classes."""
    if kwargs:
        raise DistillError(
            f"model: '{folder}' is a saved model, whose config.json fixes its architecture, so it takes "
            f"no kwargs (got {sorted(kwargs)}); remove them, or build a model from a config instead."
        )
    # its input size is checked by the first forward (a ViT names both sizes; preflight says so)
    return load_pretrained(folder, IMAGE, num_classes, "model", trust_checkpoint)


@contextmanager
def _skip_init():
    """torch.nn.init's in-place initialisers as no-ops: built-in layers' reset_parameters and
    the zoo's own init loops call them through the module, so a model built inside has the
    right shapes and uninitialised values. Not thread-safe; for listings only."""
    from torch.nn import init

    saved = {n: f for n, f in vars(init).items() if n.endswith("_") and not n.startswith("_") and callable(f)}
    for n in saved:
        setattr(init, n, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(init, n, f)


def create_skeleton(name: str, num_classes: int, in_shape, **kwargs) -> nn.Module:
    """The model create_model builds, on the meta device and without random initialisation:
    the same modules, parameter shapes and counts, and (count_flops) FLOPs, in a fraction of
    the time and no memory. Its tensors hold no values: for `distill models`, not to train."""
    with _skip_init(), torch.device("meta"):
        return create_model(name, num_classes, in_shape, **kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, in_shape) -> int:
    """Floating-point operations of one forward pass on one sample (torch's flop counter;
    a multiply-add counts as 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    device = next(model.parameters(), torch.empty(0)).device  # meta for a create_skeleton model
    with counter, torch.no_grad():
        model(torch.zeros(1, *in_shape, device=device))
    model.train(was_training)
    return counter.get_total_flops()


def default_shape(name: str) -> tuple[tuple[int, ...], int]:
    """The input shape and class count a zoo model is usually built for (for listings)."""
    if name in ("mlp", "cnn"):
        return (1, 8, 8), 10
    if name == "hf_image":  # the default config is ViT-Base/16
        return (3, 224, 224), 1000
    return (3, 32, 32), ZOO_NUM_CLASSES.get(name, 100)


__all__ = ["MODELS", "MLP", "SmallCNN", "count_flops", "count_parameters", "create_model", "create_skeleton",
           "default_shape", "hf_image"]
