"""Model zoo: `create_model(name, num_classes, in_shape, **kwargs)`.

A name is a registry key or a `package.module:function` path to the user's own builder,
called as `function(num_classes=..., in_shape=..., **kwargs)`.
"""

from __future__ import annotations

import difflib
import importlib
import inspect

from torch import nn

from ..errors import DistillError
from .cnn import SmallCNN
from .mlp import MLP
from .zoo import ZOO

MODELS = {"mlp": MLP, "cnn": SmallCNN, **ZOO}


def _resolve(name: str):
    if name in MODELS:
        return MODELS[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise DistillError(
                f"Could not import model '{name}' ({e}). Give it as package.module:function, "
                "importable from the current directory or the installed packages."
            ) from e
    close = difflib.get_close_matches(name, MODELS, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise DistillError(f"Unknown model '{name}'.{hint} Known models: {', '.join(MODELS)}.")


def create_model(name: str, num_classes: int, in_shape, **kwargs) -> nn.Module:
    builder = _resolve(name)
    params = inspect.signature(builder).parameters
    has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in kwargs if k not in params and not has_var_kw]
    if unknown:
        valid = [k for k in params if k not in ("in_shape", "num_classes", "self")]
        raise DistillError(
            f"Model '{name}' has no argument(s) {unknown}. Its arguments: {', '.join(valid)}."
        )
    try:
        return builder(in_shape=tuple(in_shape), num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as e:
        raise DistillError(f"Could not build model '{name}' with {kwargs}: {e}") from e


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["MODELS", "MLP", "SmallCNN", "count_parameters", "create_model"]
