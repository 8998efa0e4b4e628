"""The run schema (pydantic, unknown keys forbidden), YAML loading and dotted overrides.

The schema's defaults are the built-in demo: digits, a label-scarce transfer set, a CNN
teacher and a small MLP student (chosen by benchmarks/digits_seeds.py; see the README). Every user mistake becomes a ConfigError whose message names
the key and the fix.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError
from .naming import did_you_mean


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Strict):
    name: str = "digits"  # digits | cifar10 | cifar100 | mnist | fashion_mnist | folder | npz | csv
    path: str | None = None  # where to read anything but digits from
    augment: str | list[dict[str, Any]] = "none"  # none | flip | crop_flip | [{name: ..., ...}]
    size: int | list[int] | None = None  # folder: resize (shorter side, or [h, w])
    crop: int | list[int] | None = None  # folder: centre crop after resizing
    label_column: str = "label"  # csv
    label_fraction: float = Field(0.1, gt=0, le=1)
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    batch_size: int = Field(64, gt=0)
    split_seed: int = 0
    unlabelled_path: str | None = None


class ModelConfig(Strict):
    model: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = None


class TrainConfig(Strict):
    epochs: int = Field(50, gt=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    schedule: Literal["constant", "cosine", "multistep"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0)
    grad_clip: float | None = Field(None, gt=0)
    checkpoint_every: int = Field(1, ge=0)  # epochs between checkpoints; 0: none
    deterministic: bool = False
    # One thread by default: the small models a CPU run usually trains are fastest on one
    # (on a 2-core machine with the other core busy, two threads slowed the demo ~8x).
    # null = torch's default (all cores), e.g. for big models on a CPU.
    threads: int | None = Field(1, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast; fp16 adds a GradScaler
    channels_last: bool = False  # NHWC memory format for conv nets (benchmarks/speed.py --levers)
    teacher_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"  # hold the teacher in half to save memory
    scale_lr: bool = False  # multiply lr by the number of processes (batch_size is global)
    device: str = "auto"


class LogConfig(Strict):
    tensorboard: bool = False  # also write TensorBoard scalars to <run>/tensorboard/


Stage = Literal["teacher", "scratch", "distill"]


class RunConfig(Strict):
    name: str = "digits-transfer"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: ModelConfig = Field(
        default_factory=lambda: ModelConfig(model="cnn", kwargs={"channels": [64, 128], "dropout": 0.3})
    )
    student: ModelConfig = Field(default_factory=lambda: ModelConfig(model="mlp", kwargs={"hidden": [64]}))
    loss: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "T": 4.0}}
    )
    train: TrainConfig = Field(default_factory=TrainConfig)
    stages: list[Stage] = Field(default_factory=lambda: ["teacher", "scratch", "distill"])
    log: LogConfig = Field(default_factory=LogConfig)
    # Teacher-output cache (distill.cache): auto = in memory, fp32, only when exact and useful.
    cache: Literal["off", "auto", "memory", "disk"] = "auto"
    cache_dtype: Literal["fp32", "fp16"] = "fp32"
    cache_topk: int | None = Field(None, gt=0)
    cache_dir: str | None = None  # disk mode; default <run folder>/teacher_cache


# ---------------------------------------------------------------- overrides and loading


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.epochs=5' -> (['train', 'epochs'], 5); values are parsed as YAML scalars/lists."""
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"Cannot read override '{text}'. Write overrides as dotted.key=value, "
            "e.g. train.epochs=5 or loss.kd.T=2."
        )
    try:
        parsed = yaml.safe_load(value) if value else ""
    except yaml.YAMLError:
        parsed = value
    return key.split("."), _number(parsed)


def _number(value: Any) -> Any:
    """YAML 1.1 reads 5e-1 (no dot) as a string; users mean a number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_override(raw: dict, path: list[str], value: Any) -> None:
    """Set raw[path] = value, creating levels as needed; a null loss term removes the term."""
    node = raw
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    if value is None and path[:1] == ["loss"] and len(path) == 2:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """Load a YAML config (or the built-in default), apply overrides, validate."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"Config file '{p}' does not exist. Check the path, or run without one for the built-in demo.")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"Config file '{p}' is not valid YAML: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"Config file '{p}' must be a YAML mapping of keys to values.")
    if "loss" not in raw:
        raw["loss"] = RunConfig().loss  # overrides of loss.* refine the default terms
    for text in overrides:
        apply_override(raw, *parse_override(text))
    _default_models(raw)
    return validate(raw)


def _default_models(raw: dict) -> None:
    """A teacher/student section without `model` keeps the default model and its kwargs
    (kwargs given by the user override the defaults one by one)."""
    defaults = RunConfig().model_dump()
    for role in ("teacher", "student"):
        node = raw.setdefault(role, {})
        if isinstance(node, dict) and "model" not in node:
            node["model"] = defaults[role]["model"]
            node["kwargs"] = {**defaults[role]["kwargs"], **(node.get("kwargs") or {})}


def validate(raw: dict) -> RunConfig:
    if isinstance(raw.get("loss"), dict):  # loss arguments are untyped here: fix 5e-1 too
        for params in raw["loss"].values():
            if isinstance(params, dict):
                params.update({k: _number(v) for k, v in params.items() if k not in ("student", "teacher")})
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_explain(e)) from None
    check_loss(cfg.loss)
    return cfg


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------- loss terms


def check_loss(loss: dict[str, dict[str, Any]]) -> None:
    """Check every loss term: known name, numeric non-negative weight, valid arguments."""
    from .losses import resolve_loss

    if not loss:
        raise ConfigError("The config has no loss terms. Add at least `loss: {ce: {weight: 1.0}}`.")
    total = 0.0
    for name, params in loss.items():
        if not isinstance(params, dict):
            raise ConfigError(f"loss.{name} must be a mapping such as {{weight: 1.0}}; got {params!r}.")
        weight = params.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            raise ConfigError(f"loss.{name}.weight must be a number >= 0; got {weight!r}.")
        total += weight
        args = {k: v for k, v in params.items() if k != "weight"}
        if name == "ce":
            if args:
                raise ConfigError(f"loss.ce takes only a weight; remove {sorted(args)}.")
            continue
        cls = resolve_loss(name)
        params = inspect.signature(cls.__init__).parameters
        valid = [p for p in params if p != "self"]
        for key in args:
            if key not in valid:
                raise ConfigError(_unknown(f"loss.{name}", ["weight", *valid], key))
        missing = [p for p in valid if params[p].default is inspect.Parameter.empty and p not in args]
        if missing:
            example = " ".join(f"loss.{name}.{p}=..." for p in missing)
            raise ConfigError(
                f"loss.{name} needs {', '.join(missing)} (for feature methods: module paths as "
                f"named_modules() gives them, e.g. layer1). Set them: {example}"
            )
        try:
            cls(**args)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"loss.{name}: {e}.") from None
    if total == 0:
        raise ConfigError("All loss weights are zero, so nothing would train. Give at least one term a weight > 0.")


# ---------------------------------------------------------------- error messages


def _unknown(where: str, valid: list[str], key: str) -> str:
    hint = did_you_mean(key, valid)
    place = f"under '{where}'" if where else "at the top level"
    return f"Unknown key '{key}' {place}.{hint} Valid keys there: {', '.join(valid)}."


def _fields_at(loc: tuple) -> list[str]:
    model: Any = RunConfig
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (inspect.isclass(field.annotation) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)


def _explain(error: ValidationError) -> str:
    msgs = []
    for err in error.errors()[:3]:
        loc = tuple(err["loc"])
        dotted = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            where = ".".join(str(p) for p in loc[:-1])
            msgs.append(_unknown(where, _fields_at(loc[:-1]), str(loc[-1])))
        else:
            msg = err["msg"][0].lower() + err["msg"][1:]
            msgs.append(f"Invalid value for '{dotted}': {msg} (got {err.get('input')!r}).")
    return " ".join(msgs)
