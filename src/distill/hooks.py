"""Capture intermediate outputs (or inputs) of submodules by path, with forward hooks.

Paths are the names `model.named_modules()` gives ("layer2", "hidden.0"); append ":input" to
capture a module's input instead of its output. User models need no edits. A module that returns
a tuple (a Hugging Face block's (hidden, attention weights)) gives its first element. Paths resolve
through wrappers, so "layer2" also finds DDP's "module.layer2" and torch.compile's
"_orig_mod.layer2". A module that runs twice in one forward pass would make "its output"
ambiguous, so that is an error.

In-place ops. A hook stores a reference to the tensor, so an op later in the same forward that
changes it in place (`ReLU(inplace=True)` after a BatchNorm, `x += shortcut`, an in-place
dropout) would silently turn the stored value into the post-op one. Such a change bumps the
tensor's version counter (`t._version`, shared with its views), so `FeatureCapture.run` checks
it once `model(inputs)` has returned. To be right from the first batch without running the
forward twice (which would update BatchNorm statistics and redraw dropout), the first run of
each path stores a clone (`.clone()` keeps autograd) and watches the original: if that changed,
the path is cloned on every run from then on; if not, it is never cloned again (no copy at all).
What was learned holds per path and per train/eval mode of the model, because in-place dropout
changes its input only in train mode. If a path learned as untouched is changed in place on a
later run (data-dependent control flow), `run` raises a DistillError instead of returning a
wrong value. ":input" paths are read by a forward pre-hook, before the module runs, so a module
that changes its own input (`ReLU(inplace=True)`'s ":input") gives the value it was given.
Inference-mode tensors have no version counter, so they are always cloned.
"""

from __future__ import annotations

import contextlib
import difflib
from functools import partial

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


_FIX = ("set inplace=False on the op after it (e.g. nn.ReLU(inplace=False)), or hook the module "
        "after the in-place op (e.g. the ReLU) instead")


def _record_input(capture: FeatureCapture, path: str, module, args) -> None:
    capture._record(path, args[0])


def _record_output(capture: FeatureCapture, path: str, module, args, out) -> None:
    capture._record(path, out)


class FeatureCapture:
    """Forward hooks on `paths` of `model`; `features` holds this forward pass's tensors."""

    def __init__(self, model: nn.Module, paths: list[str], role: str = "model"):
        self.role = role
        self.features: dict[str, torch.Tensor] = {}
        self.active = False
        self.handles = []
        # (path, training) -> whether the path's tensor gets changed in place later in the
        # forward; absent: not learned yet, so clone and watch.
        self.mutated: dict[tuple[str, bool], bool] = {}
        self._training = False
        self._watched: dict[str, tuple[torch.Tensor, int, bool]] = {}  # path -> (tensor, version, cloned)
        for path in dict.fromkeys(paths):  # unique, in order
            name, _, kind = path.partition(":")
            if kind not in ("", "input", "output"):
                raise DistillError(f"Feature path '{path}': the suffix must be ':input' or ':output'.")
            module = resolve_module(model, name, role)
            # partials, not lambdas: a deep copy of the model (distill.sharding's working copy)
            # then calls the copied capture, not this one
            if kind == "input":
                # Before the module runs: a module may change its own input in place.
                handle = module.register_forward_pre_hook(partial(_record_input, self, path))
            else:
                handle = module.register_forward_hook(partial(_record_output, self, path))
            self.handles.append(handle)

    def _record(self, path: str, value) -> None:
        if not self.active:  # e.g. evaluation calls the model directly: record nothing
            return
        if path in self.features:
            raise DistillError(
                f"The {self.role}'s module '{path}' ran twice in one forward pass, so its "
                "feature is ambiguous. Hook a module that runs once (e.g. its parent block)."
            )
        if isinstance(value, tuple | list) and value and isinstance(value[0], torch.Tensor):
            value = value[0]  # (hidden, attention weights, ...): Hugging Face blocks, RNNs
        if not isinstance(value, torch.Tensor):
            raise DistillError(f"The {self.role}'s module '{path}' returns a {type(value).__name__}, not a "
                               "tensor (or a tuple starting with one), so it has no feature to capture. "
                               "Hook a submodule that returns a tensor.")
        self.features[path] = self._keep(path, value)

    def _keep(self, path: str, value):
        """The value to store: a clone where a later in-place op may (or does) change it."""
        if value.is_inference():  # no version counter to watch: always copy
            return value.clone()
        mutated = self.mutated.get((path, self._training))
        if mutated:
            return value.clone()
        self._watched[path] = (value, value._version, mutated is None)
        return value.clone() if mutated is None else value

    def _check(self) -> None:
        """After the forward: learn which paths were changed in place; refuse a wrong value."""
        for path, (tensor, version, cloned) in self._watched.items():
            changed = tensor._version != version
            if cloned:
                self.mutated[(path, self._training)] = changed
            elif changed:
                self.mutated[(path, self._training)] = True  # clone from now on, if run again
                raise DistillError(
                    f"The {self.role}'s module '{path}' gave a feature that an op later in the "
                    "forward changed in place, so the captured value would be wrong. On earlier "
                    "batches it was left alone (data-dependent control flow?), so it was not "
                    f"copied. To fix it, {_FIX}."
                )

    def run(self, model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Call `model(inputs)`; return its output and the captured features (their values as
        the hooked modules gave them, even if an in-place op changed them afterwards)."""
        with self.capturing(model) as features:
            out = model(inputs)
        return out, features

    @contextlib.contextmanager
    def capturing(self, model: nn.Module):
        """Record the hooked paths while the block runs a forward pass of `model` (however it is
        called: a language model's base model, without its output layer); yields the dict
        that holds the features once the block ends."""
        features = self.features = {}
        self._watched, self._training, self.active = {}, model.training, True
        try:
            yield features
            self._check()
        finally:
            self.active, self._watched, self.features = False, {}, {}

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
