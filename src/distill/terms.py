"""Loss terms in a config: a free name, a `type` (a registry name or a `package.module:Class`
path; default: the name), a weight and the type's keyword arguments.

Checking a config never imports a code path (a config is data); `build_loss_term` does, when a
run starts and builds its terms.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from .errors import ConfigError, short
from .naming import unknown_key

# A term's name becomes an nn.ModuleDict key and a metrics column (train_<name>): a plain
# identifier, so it survives dotted overrides, YAML and state-dict keys.
TERM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CODE_PATH = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
RESERVED_TERM_NAMES = frozenset(dir(nn.ModuleDict()))  # "train", "to", "keys", ...
# Temperatures below this are refused: logits / T must stay finite in fp32 and fp16 (T=1e-40
# turns every logit into +-inf and the loss into NaN), and at T=1e-3 a logit gap of 0.1 is
# already e^100 in the softmax: the soft targets are one-hot, nothing softer is left to learn.
MIN_TEMPERATURE = 1e-3
TEMPERATURE_KEYS = ("T", "temperature", "tau")


def term_spec(name: str, params: dict[str, Any]) -> tuple[str, dict[str, Any], float]:
    """(type, constructor kwargs, weight) of one loss term; type defaults to its name."""
    args = {k: v for k, v in params.items() if k not in ("weight", "type")}
    return params.get("type", name), args, params.get("weight", 1.0)


def is_code_path(kind: str) -> bool:
    """`package.module:Class` names user code, imported only when a run builds its terms."""
    return ":" in kind


def check_loss(loss: dict[str, dict[str, Any]], task: str = "classification") -> None:
    """Check every loss term: a plain name, a known type or a well-formed code path, a numeric
    non-negative weight, valid arguments. A code path is not imported here: validating or
    printing a config runs no code (`build_loss_term` imports it when a run starts)."""
    if not loss:
        raise ConfigError("The config has no loss terms. Add at least `loss: {ce: {weight: 1.0}}`.")
    total = 0.0
    for name, params in loss.items():
        if not isinstance(params, dict):
            raise ConfigError(f"loss.{name} must be a mapping such as {{weight: 1.0}}; got {short(params)}.")
        _check_term_name(name, params)
        kind, args, weight = term_spec(name, params)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"loss.{name}.weight must be a finite number >= 0; got {short(weight)}.")
        _check_values(name, params)
        total += weight
        if kind == "ce":
            if args:
                raise ConfigError(f"loss.{name} is the label term and takes only a weight; remove {sorted(args)}.")
            continue
        if is_code_path(kind):
            if not CODE_PATH.fullmatch(kind):
                raise ConfigError(
                    f"loss.{name}.type '{kind}' is not a code path: write package.module:Class, "
                    "e.g. mypkg.losses:LogitMSE."
                )
            continue
        build_loss_term(name, kind, args, task)  # our own classes: building checks the values
    if total == 0:
        raise ConfigError("All loss weights are zero, so nothing would train. Give at least one term a weight > 0.")


def _check_values(name: str, params: dict[str, Any]) -> None:
    """Every number a term is given is finite (NaN/Inf pass `> 0` checks or fail them with a
    misleading message), and a temperature is at least MIN_TEMPERATURE."""
    for key, value in params.items():
        values = value if isinstance(value, list | tuple) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ConfigError(f"loss.{name}.{key} must be a finite number; got {short(value)}.")
        if key in TEMPERATURE_KEYS and isinstance(value, int | float) and not isinstance(value, bool) \
                and 0 < value < MIN_TEMPERATURE:
            raise ConfigError(
                f"loss.{name}.{key}={short(value)} is below {MIN_TEMPERATURE}: logits / {key} overflow to "
                f"infinity and the loss to NaN, and the soft targets are one-hot long before that. "
                f"Use {key} >= {MIN_TEMPERATURE} (typical values are 1 to 20)."
            )


def _check_term_name(name: str, params: dict[str, Any]) -> None:
    kind = params.get("type", name)
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"loss.{name}.type must be a loss name or package.module:Class; got {short(kind)}.")
    if not TERM_NAME.fullmatch(name):
        example = "mine" if is_code_path(name) else "term1"
        typed = f" with type: '{name}'" if is_code_path(name) else ""
        raise ConfigError(
            f"Loss term name '{name}' must be a plain identifier (letters, digits, _). Give the "
            f"term a free name{typed}, e.g. `loss: {{{example}: {{type: '{kind}', weight: 1.0}}}}` "
            f"(on the command line: loss.{example}.type={kind} loss.{example}.weight=1.0)."
        )
    if name in RESERVED_TERM_NAMES:
        raise ConfigError(f"Loss term name '{name}' is reserved by torch.nn.ModuleDict; rename the term.")
    if name in ("loss", "acc"):  # logged as train_<name>: it would overwrite the total or the accuracy
        raise ConfigError(f"Loss term name '{name}' is taken: train_{name} is logged for the run itself. "
                          f"Rename the term, e.g. loss.{name}_term.type={kind}.")
    if (name == "ce") != (kind == "ce"):
        raise ConfigError(
            "The label (cross-entropy) term is named `ce` and has no type; "
            f"loss.{name} has type '{kind}'. Name the label term ce, and give other terms other names."
        )


def build_loss_term(name: str, kind: str, args: dict[str, Any], task: str = "classification"):
    """The loss module of one term: its class resolved (a code path is imported here), its
    arguments checked against the constructor's signature, then built."""
    from .losses import resolve_loss
    from .losses.lm import resolve_token_loss

    cls = (resolve_token_loss if task == "language_model" else resolve_loss)(kind)
    if not inspect.isclass(cls):
        raise ConfigError(f"loss.{name}: '{kind}' is not a class (got {type(cls).__name__}).")
    params = inspect.signature(cls.__init__).parameters
    valid = [p for p, v in params.items() if p != "self" and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]
    takes_any = any(v.kind is v.VAR_KEYWORD for v in params.values())
    for key in args:
        if key not in valid and not takes_any:
            raise ConfigError(unknown_key(f"loss.{name}", ["type", "weight", *valid], key))
    missing = [p for p in valid if params[p].default is inspect.Parameter.empty and p not in args]
    if missing:
        example = " ".join(f"loss.{name}.{p}=..." for p in missing)
        raise ConfigError(
            f"loss.{name} needs {', '.join(missing)} (for feature methods: module paths as "
            f"named_modules() gives them, e.g. layer1). Set them: {example}"
        )
    try:
        term = cls(**args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"loss.{name}: {e}.") from None
    from .losses.transformer import MapsLayers

    if task != "text_classification" and isinstance(term, MapsLayers):
        raise ConfigError(f"loss.{name} ({kind}) reads a transformer's layers (embeddings, hidden.<i>, "
                          "attention.<i>), which only task: text_classification models expose. Set "
                          "task=text_classification, or use a feature method such as fitnet or cosine.")
    return term


def build_terms(cfg) -> tuple[dict, float]:
    """{name: (loss_module, weight)} for every non-CE term, and the CE weight. Code paths
    named as a term's type are imported here, when a run starts, not when a config is read."""
    terms = {}
    for name, params in cfg.loss.items():
        kind, args, weight = term_spec(name, params)
        if kind != "ce":
            terms[name] = (build_loss_term(name, kind, args, cfg.task), weight)
    return terms, cfg.loss.get("ce", {"weight": 0.0}).get("weight", 1.0)


@dataclass(frozen=True)
class Declared:
    """What a loss term declares to the Distiller, beyond `forward(student, teacher, batch)`:
    the module paths it reads (hooked on both models), `setup(student_shapes, teacher_shapes)`
    to size projectors from one probed batch, and `set_epoch(epoch)` for schedules (DKD's
    warm-up). All are optional, so a user's term needs only `forward`."""

    student_layers: tuple[str, ...] = ()
    teacher_layers: tuple[str, ...] = ()
    setup: Callable[[dict, dict], None] | None = None
    set_epoch: Callable[[int], None] | None = None


def declared(term: nn.Module) -> Declared:
    """A term's declarations, read once when the Distiller is built: the one place where a
    term's optional members are looked up (a user's term may have none of them)."""
    return Declared(tuple(getattr(term, "student_layers", ())), tuple(getattr(term, "teacher_layers", ())),
                    getattr(term, "setup", None), getattr(term, "set_epoch", None))
