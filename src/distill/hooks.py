"""Capture intermediate outputs (or inputs) of submodules by path, with forward hooks.

Paths are the names `model.named_modules()` gives ("layer2", "hidden.0"); append ":input" to
capture a module's input instead of its output. User models need no edits. Paths resolve
through wrappers, so "layer2" also finds DDP's "module.layer2" and torch.compile's
"_orig_mod.layer2". A module that runs twice in one forward pass would make "its output"
ambiguous, so that is an error.
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from .errors import DistillError

WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _strip(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


def resolve_module(model: nn.Module, path: str, role: str = "model") -> nn.Module:
    """The submodule at `path`, looked up modulo wrapper prefixes; a clear error if absent."""
    by_name = {_strip(name): module for name, module in model.named_modules() if name}
    key = _strip(path)
    if key in by_name:
        return by_name[key]
    close = difflib.get_close_matches(key, by_name, n=5, cutoff=0.4)
    names = close or list(by_name)[:12]
    raise DistillError(
        f"The {role} has no module '{path}'. "
        f"{'Nearest names' if close else 'Some of its modules'}: {', '.join(names)}. "
        f"Paths are as {role}.named_modules() names them (run `distill models` to list them)."
    )


class FeatureCapture:
    """Forward hooks on `paths` of `model`; `features` holds this forward pass's tensors."""

    def __init__(self, model: nn.Module, paths: list[str], role: str = "model"):
        self.role = role
        self.features: dict[str, torch.Tensor] = {}
        self.active = False
        self.handles = []
        for path in dict.fromkeys(paths):  # unique, in order
            name, _, kind = path.partition(":")
            if kind not in ("", "input", "output"):
                raise DistillError(f"Feature path '{path}': the suffix must be ':input' or ':output'.")
            module = resolve_module(model, name, role)
            self.handles.append(module.register_forward_hook(self._hook(path, kind == "input")))

    def _hook(self, path: str, want_input: bool):
        def hook(module, inputs, output):
            if not self.active:  # e.g. evaluation calls the model directly: record nothing
                return
            if path in self.features:
                raise DistillError(
                    f"The {self.role}'s module '{path}' ran twice in one forward pass, so its "
                    "feature is ambiguous. Hook a module that runs once (e.g. its parent block)."
                )
            self.features[path] = inputs[0] if want_input else output

        return hook

    def run(self, model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Call `model(inputs)`; return its output and the captured features."""
        self.features, self.active = {}, True
        try:
            out = model(inputs)
        finally:
            self.active = False
        features, self.features = self.features, {}
        return out, features

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
