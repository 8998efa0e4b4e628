"""Loading a run config: YAML files, dotted overrides, validation and friendly errors.

The schema itself (one pydantic model per task, `RunConfig` their union keyed on `task`) is
in config_schema.py and re-exported here. Every user mistake becomes a ConfigError whose
message names the key and the fix.
"""

from __future__ import annotations

import copy
import inspect
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .config_schema import (
    DEFAULT_TASK,
    LM_DEFAULTS,
    RUN_NAME,
    SCHEMAS,
    SEED_LIMIT,
    SPLIT_SEED_LIMIT,
    TASK_DEFAULTS,
    CacheConfig,
    ClassificationConfig,
    DataConfig,
    LanguageModelConfig,
    LMConfig,
    LMDataConfig,
    LogConfig,
    ModelConfig,
    OnPolicyConfig,
    RunBase,
    RunConfig,
    Stage,
    Strict,
    TextClassificationConfig,
    TextDataConfig,
    TrainConfig,
    parse,
)
from .config_yaml import AliasRefused, load_yaml, read_text
from .errors import ConfigError, clip, short
from .naming import did_you_mean, unknown_key
from .saved_config import migrate, saved_by_distill
from .stage_plan import check_plan, is_teacher, members, spec_of
from .terms import check_loss
from .unused_keys import BUILT_IN_DATA, check_unused

__all__ = [
    "BUILT_IN_DATA", "DEFAULT_TASK", "LM_DEFAULTS", "RUN_NAME", "SCHEMAS", "SEED_LIMIT", "SPLIT_SEED_LIMIT", "CacheConfig",
    "ClassificationConfig", "DataConfig", "LMConfig", "LMDataConfig", "LanguageModelConfig",
    "LogConfig", "ModelConfig", "OnPolicyConfig", "RunBase", "RunConfig", "Stage", "Strict",
    "TextClassificationConfig", "TextDataConfig", "TrainConfig", "absolute_paths", "apply_override", "load_config", "parse", "parse_override",
    "stage_train", "to_yaml", "validate",
]


# ---------------------------------------------------------------- overrides and loading


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.epochs=5' -> (['train', 'epochs'], 5); values are parsed as YAML scalars/lists."""
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"Cannot read override {short(text)}. Write overrides as dotted.key=value, "
            "e.g. train.epochs=5 or loss.kd.T=2."
        )
    try:
        parsed = load_yaml(value, f"Override {short(key, 100)}") if value else ""
    except (yaml.YAMLError, AliasRefused):  # not YAML (or an alias): the text itself
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


# A section that also takes one bare value, short for {key: value}: `cache: disk`.
SHORTHAND = {"cache": "mode"}


def _section(path: list[str], value: Any) -> dict:
    """What a non-mapping value at `path` becomes when an override writes below it."""
    if len(path) == 1 and path[0] in SHORTHAND and isinstance(value, str | bool):
        return {SHORTHAND[path[0]]: value}  # cache=disk then cache.dir=x keeps the disk
    return {}


def apply_override(raw: dict, path: list[str], value: Any) -> None:
    """Set raw[path] = value, creating levels as needed; a null loss term removes the term;
    a bare value for a shorthand section (cache=disk) sets only its key (cache.mode)."""
    node = raw
    for i, part in enumerate(path[:-1]):
        if not isinstance(node.get(part), dict):
            node[part] = _section(path[: i + 1], node.get(part))
        node = node[part]
    leaf = path[-1]
    if value is None and path[:1] == ["loss"] and len(path) == 2:
        node.pop(leaf, None)
    elif path == [leaf] and leaf in SHORTHAND and isinstance(node.get(leaf), dict) and isinstance(value, str | bool):
        node[leaf][SHORTHAND[leaf]] = value
    else:
        node[leaf] = value


def _read_file(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Config file '{p}' does not exist. Check the path, or run without one for the built-in demo.")
    try:
        raw = load_yaml(read_text(p), f"Config file '{p}'") or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"Config file '{p}' is not valid YAML: {clip(str(e), 500)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"Config file '{p}' must be a YAML mapping of keys to values.")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """Load a YAML config (or the built-in default), apply overrides, validate."""
    if isinstance(overrides, str):  # a string would be read character by character
        raise ConfigError(f"overrides must be a list of key=value strings, e.g. [{overrides!r}]; got one string.")
    raw: dict = {} if path is None else _read_file(path)
    if path is not None and saved_by_distill(path):
        raw = migrate(raw)  # a run folder's config.yaml, maybe in an older schema (saved_config)
    parsed = [parse_override(text) for text in overrides]
    task = next((v for k, v in reversed(parsed) if k == ["task"]), raw.get("task"))
    schema = SCHEMAS.get(task, SCHEMAS[DEFAULT_TASK]) if isinstance(task, str) else SCHEMAS[DEFAULT_TASK]
    defaults = schema().model_dump()  # an unknown task: validate names the valid ones
    if "loss" not in raw:
        raw["loss"] = copy.deepcopy(defaults["loss"])  # overrides of loss.* refine the default terms
    if isinstance(task, str) and task in TASK_DEFAULTS:
        prefix, task_defaults = TASK_DEFAULTS[task]
        # an unnamed run is named after its data (the last data.name override wins): lm-<data.name>
        data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
        data_name = next((v for k, v in reversed(parsed) if k == ["data", "name"]),
                         data.get("name", task_defaults["data"]["name"]))
        raw.setdefault("name", f"{prefix}-{data_name}")
        for section in ("data", "train"):  # a partial section keeps the task's other defaults
            if isinstance(raw.setdefault(section, {}), dict):
                for key, value in task_defaults[section].items():
                    raw[section].setdefault(key, value)
    for path_, value in parsed:
        apply_override(raw, path_, value)
    _default_models(raw, defaults)
    return validate(raw)


def _default_models(raw: dict, defaults: dict) -> None:
    """A teacher/student section without `model` keeps the default model and its kwargs
    (kwargs given by the user override the defaults one by one)."""
    for role in ("teacher", "student"):
        node = raw.setdefault(role, {})
        if isinstance(node, dict) and "model" not in node:
            node["model"] = defaults[role]["model"]
            node["kwargs"] = {**defaults[role]["kwargs"], **(node.get("kwargs") or {})}
            if defaults[role].get("train"):
                node["train"] = {**defaults[role]["train"], **(node.get("train") or {})}


def validate(raw: dict) -> RunConfig:
    """The schema of raw's `task` (ClassificationConfig or LanguageModelConfig), validated and
    checked; a ConfigError naming the key and the fix otherwise."""
    if isinstance(raw.get("loss"), dict):  # loss arguments are untyped here: fix 5e-1 too
        for params in raw["loss"].values():
            if isinstance(params, dict):
                params.update({k: _number(v) for k, v in params.items() if k not in ("student", "teacher", "type")})
    try:
        cfg = parse(raw)
    except ValidationError as e:
        raise ConfigError(_explain(e)) from None
    check_loss(cfg.loss, cfg.task)
    check_values(cfg)
    check_unused(cfg)
    if cfg.student.train:
        raise ConfigError("student.train is not used: the students train with `train`. Move "
                          f"{sorted(cfg.student.train)} there.")
    for stage in ("teacher", *members(cfg)):
        stage_train(cfg, stage)  # validates teacher.train (and each of several teachers')
    check_length(cfg)
    check_plan(cfg)
    return cfg


WIDTH_KEYS = ("hidden", "channels")  # zoo kwargs that are layer widths: each must be >= 1


def check_values(cfg: RunConfig) -> None:
    """Values the schema's types accept but a run cannot use: repeated stages, and negative
    numbers or zero widths in a built-in model's kwargs (torch fails on them with a traceback,
    or builds a layer of width 0 that trains nothing)."""
    repeated = sorted({s for s in cfg.stages if cfg.stages.count(s) > 1})
    if repeated:
        raise ConfigError(f"stages lists {', '.join(repeated)} more than once ({cfg.stages}); "
                          "each stage runs once. Remove the repeats, e.g. stages=[teacher,scratch,distill].")
    specs = [(role, getattr(cfg, role)) for role in ("teacher", "student")]
    if cfg.task == "classification":  # the list sections' models too
        specs += [(f"teachers[{t.name}]", t) for t in cfg.teachers]
        specs += [(f"assistants[{i}]", a) for i, a in enumerate(cfg.assistants)]
        specs += [(f"mutual.peers[{i}]", p) for i, p in enumerate(cfg.mutual.peers)]
    for role, model in specs:
        if ":" in model.model:
            continue  # user code: its arguments mean what it says
        for key, value in model.kwargs.items():
            values = value if isinstance(value, list | tuple) else [value]
            ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
            low = 1 if key in WIDTH_KEYS else 0
            if any(v < low for v in ints):
                raise ConfigError(
                    f"{role}.kwargs.{key}={value!r} has a value below {low}: layer sizes and counts "
                    f"must be positive. Set e.g. {role}.kwargs.{key}={[64] if key in WIDTH_KEYS else 1}."
                )


PATH_KEYS = ("data.path", "data.unlabelled_path", "teacher.checkpoint", "student.checkpoint", "cache.dir")
LOCAL_OR_NAMED = ("data.tokenizer", "data.teacher_tokenizer", "teacher.model", "student.model")  # a name, or a local folder


def absolute_paths(cfg: RunConfig, base: Path | None = None) -> RunConfig:
    """`cfg` with every relative file path made absolute against `base` (the current
    directory), so a run folder's config.yaml reads the same data from any directory."""
    base = base or Path.cwd()
    raw = cfg.model_dump()
    named = LOCAL_OR_NAMED if cfg.task != "classification" else ()  # zoo names are no paths
    for key in (*PATH_KEYS, *named):
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node[part]
        value = node.get(leaf)  # None too where this task's schema has no such key
        if not isinstance(value, str) or not value or ":" in value:
            continue
        path = base / Path(value).expanduser()
        if key in PATH_KEYS or path.is_dir():
            node[leaf] = str(path.absolute())
    for spec in _listed_specs(raw):  # several teachers, assistants, peers: their checkpoints
        if spec.get("checkpoint"):
            spec["checkpoint"] = str((base / Path(spec["checkpoint"]).expanduser()).absolute())
    return type(cfg).model_validate(raw)


def _listed_specs(raw: dict) -> list[dict]:
    """The model specs of the list sections (teachers, assistants, mutual.peers) of a dumped config."""
    return [*raw.get("teachers", []), *raw.get("assistants", []), *raw.get("mutual", {}).get("peers", [])]


def stage_train(cfg: RunConfig, stage: str) -> TrainConfig:
    """The training settings of a stage: `train`, with `teacher.train` on top for the teacher
    (a teacher usually wants its own epochs and learning rate; one of several teachers, its
    entry's `train`)."""
    own = spec_of(cfg, stage).train if is_teacher(stage) else {}
    if stage.startswith("teacher-"):  # one of several teachers: teacher.train, then its own
        own = {**cfg.teacher.train, **own}
    if not own:
        return cfg.train
    try:
        return TrainConfig.model_validate({**cfg.train.model_dump(), **own})
    except ValidationError as e:
        where = "teacher.train" if stage == "teacher" else f"teachers[{stage.removeprefix('teacher-')}].train"
        raise ConfigError(_explain(e, where, type(cfg))) from None


def check_length(cfg: RunConfig) -> None:
    """train.max_steps sets the length of training, and epochs is then not read: an epochs away
    from its default beside it (in train; or, for the teacher, in teacher.train) is refused."""
    default = type(cfg)()
    sections = [("train", cfg.train, cfg.train.model_dump(), default.train.epochs)]
    if cfg.teacher.train:  # the teacher's own epochs, beside its own or an inherited max_steps
        sections.append(("teacher.train", stage_train(cfg, "teacher"), cfg.teacher.train,
                         stage_train(default, "teacher").epochs))
    for key, train, given, epochs in sections:
        if train.max_steps is None or "epochs" not in given or train.epochs == epochs:
            continue
        steps = (f"{key}.max_steps={train.max_steps}" if "max_steps" in given
                 else f"train.max_steps={train.max_steps} (which teacher.train inherits)")
        raise ConfigError(
            f"{key}.epochs={train.epochs} would be ignored: {steps} sets the length of training (as "
            "many epochs as those steps take, the last maybe in part). Remove "
            f"{key}.epochs, or set {key}.max_steps=null to train by epochs."
        )


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------- error messages

# Keys that moved: the old spelling is refused with the new one.
RENAMED = {"cache_dtype": "cache.dtype", "cache_topk": "cache.topk", "cache_dir": "cache.dir"}


def _fields_at(schema: type[BaseModel], loc: tuple) -> list[str]:
    """The keys valid at `loc` in `schema` (a task's run schema), or [] past a plain dict."""
    model: Any = schema
    if loc[:2] == ("teacher", "train"):  # a dict in the schema, TrainConfig's keys in effect
        model, loc = TrainConfig, loc[2:]
    item = None  # the section type of a list's items (teachers, assistants, mutual.peers)
    for part in loc:
        if isinstance(part, int) and item is not None:
            model, item = item, None
            continue
        field = model.model_fields.get(part) if isinstance(part, str) else None
        kind = _unless_none(field.annotation) if field is not None else None
        if typing.get_origin(kind) is list and _is_section(typing.get_args(kind)[0]):
            item = typing.get_args(kind)[0]
            continue
        if not _is_section(kind):
            return []
        model = kind
    return [] if item is not None else list(model.model_fields)


def _unless_none(kind: Any) -> Any:
    """`Section | None` (an optional section, e.g. student.lora) is `Section`; others as they are."""
    args = typing.get_args(kind)
    if len(args) == 2 and type(None) in args:
        return next(a for a in args if a is not type(None))
    return kind


def _is_section(kind: Any) -> bool:
    return inspect.isclass(kind) and issubclass(kind, BaseModel)


def _as_written(value: Any) -> str:
    """A scalar as one would write it in an override (fp16, 4, null, true), cut short."""
    if isinstance(value, str):
        return clip(value, 100)
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(value).lower()
    return short(value, 100)


def _unknown(schema: type[RunBase], loc: tuple, value: Any) -> str:
    """An unknown key at `loc`: a moved key names its new spelling, a key of another task says
    so, anything else gets the closest valid key."""
    where, key = clip(".".join(str(p) for p in loc[:-1]), 100), clip(str(loc[-1]), 100)
    if len(loc) == 1 and key in RENAMED:
        new, shown = RENAMED[key], _as_written(value)
        return (f"{key} is now {new}: the cache settings are one section, cache: {{mode, dtype, "
                f"topk, dir}}. Write {new}={shown} (in YAML: cache: {{{new.split('.')[1]}: {shown}}}).")
    valid = _fields_at(schema, loc[:-1])
    task = schema.model_fields["task"].default
    other = next((t for t, s in SCHEMAS.items() if s is not schema and key in _fields_at(s, loc[:-1])), None)
    if other is None:
        return unknown_key(where, valid, key)
    place = f"under '{where}'" if where else "at the top level"
    dotted = ".".join(str(p) for p in loc)
    setting = (f"The {dotted} section would be ignored: it holds {other} settings"
               if isinstance(value, dict) else f"{dotted}={short(value)} would be ignored: it is a {other} key")
    return (f"Unknown key '{key}' {place}. {setting}, and task={task} runs do not read it. Remove "
            f"it, or set task={other}. Valid keys there: {', '.join(valid)}.")


def _explain(error: ValidationError, prefix: str = "", schema: type[RunBase] | None = None) -> str:
    """The ValidationError of the RunConfig union (whose locations start with the task's tag)
    or, with `schema` and `prefix`, of a section of that schema, as one message."""
    msgs = []
    # a moved key first (cache_dtype -> cache.dtype): a config of the old schema learns the new one
    moved = [e for e in error.errors() if e["type"] == "extra_forbidden" and len(e["loc"]) == 2
             and e["loc"][0] in SCHEMAS and e["loc"][1] in RENAMED and schema is None]
    for err in [*moved, *(e for e in error.errors() if e not in moved)][:3]:
        loc, of = tuple(err["loc"]), schema
        if of is None and loc and loc[0] in SCHEMAS:
            of, loc = SCHEMAS[loc[0]], loc[1:]
        loc = (*prefix.split("."), *loc) if prefix else loc
        dotted = clip(".".join(str(p) for p in loc), 100)
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            given = err["input"].get("task") if isinstance(err["input"], dict) else err["input"]
            hint = did_you_mean(given, SCHEMAS) if isinstance(given, str) else ""
            msgs.append(f"Invalid value for 'task': {short(given)} is not a task.{hint} Set task to "
                        f"one of {', '.join(SCHEMAS)} (without one: {DEFAULT_TASK}).")
        elif err["type"] == "extra_forbidden" and of is not None:
            msgs.append(_unknown(of, loc, err.get("input")))
        else:
            msg = clip(err["msg"][0].lower() + err["msg"][1:], 300)
            msgs.append(f"Invalid value for '{dotted}': {msg} (got {short(err.get('input'))}).")
    return " ".join(msgs)
