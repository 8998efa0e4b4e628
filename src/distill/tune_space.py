"""The search space of `distill tune`: `--space key=low..high[:log]`, checked against the config.

A parameter is a numeric key of the run config. It is sampled as an integer when the config's
value there is an integer (train.epochs), else as a float (loss.kd.T, train.lr; a key that is
null in the config, e.g. train.grad_clip, is a float). `:log` samples on a log scale (low > 0).

The default space is the one a KD user tunes first: the temperature, the KD weight and the
learning rate. The CE weight is tied to it: whenever a space samples loss.kd.weight but not
loss.ce.weight and the config has a ce term, loss.ce.weight = 1 - loss.kd.weight (the default
config's 0.9 / 0.1 has this form). With Adam only the ratio of the two weights matters much, so
a free second weight would spend trials on a direction that changes little; sample
loss.ce.weight too (`--space loss.ce.weight=0..1`) to tune it freely.

Keys under teacher.* are refused (the teacher is trained once and shared by every trial), and
so are `seed` and `data.split_seed`: a search over seeds selects noise, not settings.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from .config import RunConfig, apply_override, validate
from .errors import ConfigError, DistillError, short

TIED = ("loss.kd.weight", "loss.ce.weight")  # (sampled, tied to 1 - sampled)
DEFAULT_SPACE = ("loss.kd.T=1..10", "loss.kd.weight=0..1", "train.lr=1e-4..1e-2:log")
REFUSED = {"seed": "a search over seeds selects noise, not settings",
           "data.split_seed": "a search over splits selects noise, not settings"}
SYNTAX = re.compile(r"^(?P<key>[A-Za-z_][\w.]*)=(?P<low>[^.:][^:]*?)\.\.(?P<high>[^:]+?)(?::(?P<log>log))?$")


@dataclass(frozen=True)
class Param:
    """One searched key: its bounds, whether on a log scale, and whether an integer."""

    key: str
    low: float
    high: float
    log: bool = False
    integer: bool = False

    def spec(self) -> str:
        """The --space text that gives this parameter back."""
        low, high = (int(self.low), int(self.high)) if self.integer else (self.low, self.high)
        return f"{self.key}={low:g}..{high:g}" + (":log" if self.log else "")


def to_json(space: list[Param]) -> list[dict]:
    return [asdict(p) for p in space]


def from_json(items: list[dict]) -> list[Param]:
    return [Param(**item) for item in items]


def _syntax_error(text: str, why: str) -> DistillError:
    return DistillError(
        f"Cannot read --space {short(text)}: {why}. Write --space key=low..high or "
        "key=low..high:log (log scale, low > 0), e.g. --space loss.kd.T=1..10 --space "
        "train.lr=1e-4..1e-2:log; the key is a numeric config key."
    )


def _number(text: str, whole: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _syntax_error(whole, f"{short(text)} is not a number") from None
    if not math.isfinite(value):
        raise _syntax_error(whole, f"{short(text)} is not a finite number")
    return value


def _leaf(cfg: RunConfig, key: str) -> Any:
    """The config's value at dotted `key`; a ConfigError naming the valid keys when absent."""
    node: Any = cfg.model_dump()
    path = key.split(".")
    for i, part in enumerate(path):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(path[:i]) or "the config"
            valid = sorted(k for k, v in node.items() if isinstance(v, dict | int | float) or v is None) \
                if isinstance(node, dict) else []
            hint = f" Keys there: {', '.join(valid)}." if valid else ""
            raise ConfigError(f"--space {key}: {where} has no key {part!r}.{hint} Check the spelling "
                              f"with `distill run --print-config`; a loss term must be in the config "
                              "(add it as an override, e.g. loss.kd.T=4) before it can be searched.")
        node = node[part]
    return node


def parse_param(text: str, cfg: RunConfig) -> Param:
    """One `key=low..high[:log]`, checked against `cfg` (a DistillError naming the fix)."""
    match = SYNTAX.match(text.strip())
    if not match:
        raise _syntax_error(text, "it is not key=low..high[:log]")
    key = match["key"]
    if key in REFUSED or key.startswith("teacher.") or key.startswith("teachers"):
        why = REFUSED.get(key, "the teacher is trained once and shared by every trial; tune it "
                          "with `distill run` and give it as teacher.checkpoint")
        raise DistillError(f"--space {key} cannot be searched: {why}.")
    low, high = _number(match["low"], text), _number(match["high"], text)
    log = bool(match["log"])
    if low >= high:
        raise _syntax_error(text, f"low ({low:g}) must be below high ({high:g})")
    if log and low <= 0:
        raise _syntax_error(text, f"a log scale needs low > 0 (got {low:g}); use a small "
                            "positive low such as 1e-5, or drop :log")
    value = _leaf(cfg, key)
    if isinstance(value, bool) or not (value is None or isinstance(value, int | float)):
        raise DistillError(f"--space {key}: its value in the config is {short(value)}, not a number; "
                           "only numeric keys can be searched.")
    integer = isinstance(value, int)
    if integer and (low != int(low) or high != int(high)):
        raise _syntax_error(text, f"{key} is an integer in the config ({value}), so its bounds "
                            "must be whole numbers")
    return Param(key, low, high, log, integer)


def parse_space(texts: list[str] | None, cfg: RunConfig) -> list[Param]:
    """The space of `--space` texts (None or empty: DEFAULT_SPACE), each bound checked by
    validating the config at it, so a trial never fails on a value the schema refuses."""
    space = [parse_param(t, cfg) for t in (texts or DEFAULT_SPACE)]
    keys = [p.key for p in space]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise DistillError(f"--space gives {', '.join(repeated)} more than once; give each key once.")
    for p in space:
        for bound in (p.low, p.high):
            try:
                apply_params(cfg, space, {p.key: int(bound) if p.integer else bound})
            except DistillError as e:
                raise DistillError(f"--space {p.spec()}: the config is invalid at {p.key}={bound:g}: "
                                   f"{e} Narrow the range.") from None
    return space


def tied(space: list[Param], cfg: RunConfig) -> bool:
    """Whether loss.ce.weight follows 1 - loss.kd.weight in this space (module docstring)."""
    keys = {p.key for p in space}
    return TIED[0] in keys and TIED[1] not in keys and "ce" in cfg.loss


def apply_params(cfg: RunConfig, space: list[Param], params: dict[str, Any],
                 overrides: dict[str, Any] | None = None) -> RunConfig:
    """`cfg` with the sampled `params` (and the tied CE weight) and then `overrides` (dotted
    key -> value: how a trial runs, e.g. stages, teacher.checkpoint), validated."""
    raw = cfg.model_dump(mode="json")
    values = shown_params(space, cfg, params) | dict(overrides or {})
    for key, value in values.items():
        apply_override(raw, key.split("."), value)
    return validate(raw)


def shown_params(space: list[Param], cfg: RunConfig, params: dict[str, Any]) -> dict[str, Any]:
    """The params as a trial ran them: the sampled ones and the tied CE weight."""
    shown = dict(params)
    if tied(space, cfg) and TIED[0] in shown:
        shown[TIED[1]] = 1.0 - float(shown[TIED[0]])
    return shown
