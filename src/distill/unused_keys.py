"""Keys a run would not read: set away from their defaults, they are refused (config.validate),
because the user would believe they took effect. A key at its default is fine: saved configs
hold all of them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .config_schema import RunConfig, unread_cache_keys
from .errors import ConfigError
from .terms import is_code_path

# Keys in a task's schema that its runs still do not read (the TrainConfig and CacheConfig
# sections are shared). A key the run would not read must not be accepted silently: the user
# would believe it took effect. (A key at its default is fine: saved configs hold all.) Keys of
# the other task are not in this task's schema at all: unknown keys.
LM_ONLY = ("train.parallel", "train.activation_checkpointing")  # distill.sharding shards transformer LMs
UNREAD = {"language_model": ("train.channels_last", "cache.dtype"), "text_classification": ("train.channels_last", *LM_ONLY),
          "classification": LM_ONLY}
BUILT_IN_DATA = {"classification": "digits", "language_model": "pydoc", "text_classification": "pydoc"}  # ship with a package


def _value(model: BaseModel, dotted: str) -> Any:
    for part in dotted.split("."):
        model = getattr(model, part)
    return model


def _unused_data_keys(name: str) -> list[tuple[str, str]]:
    """(key, why) for the classification data keys that data.name=`name` does not read."""
    code = is_code_path(name)
    ignored = []
    if code:
        ignored.append(("data.path", f"data.name={name} is your function: give it its files with data.kwargs"))
    else:
        ignored.append(("data.kwargs", "only a data.name=package.module:function (your own dataset "
                                       "function) takes arguments"))
    if name not in ("folder", "hf"):
        ignored += [(k, "only data.name=folder resizes and crops (and data.name=hf images)")
                    for k in ("data.size", "data.crop")]
    if name not in ("csv", "hf"):
        ignored.append(("data.label_column", "only data.name=csv and data.name=hf have columns"))
    if name != "hf":
        ignored.append(("data.image_column", "only data.name=hf has columns of inputs"))
    if name != "folder":
        ignored.append(("data.skip_corrupt", "only data.name=folder skips unreadable image files"))
    return ignored


def _unused_text_keys(data) -> list[tuple[str, str]]:
    """(key, why) for the text_classification data keys that this data and tokenizer do not read."""
    ignored = []
    if data.name == "pydoc":
        ignored += [(k, "data.name=pydoc is built in and labelled by topic") for k in ("data.text_column", "data.label_column")]
    if data.tokenizer != "words":
        ignored.append(("data.vocab_size", "only data.tokenizer=words hashes words into vocab_size ids"))
    return ignored


def check_unused(cfg: RunConfig) -> None:
    """A ConfigError for every key set away from its default that this run would ignore."""
    default = type(cfg)()
    ignored = [(key, f"task={cfg.task} runs do not read it") for key in UNREAD.get(cfg.task, ())]
    if cfg.data.name == BUILT_IN_DATA.get(cfg.task):
        ignored.append(("data.path", f"data.name={cfg.data.name} is built in and reads no files"))
    if cfg.task == "classification":
        ignored += _unused_data_keys(cfg.data.name)
    elif cfg.task == "text_classification":
        ignored += _unused_text_keys(cfg.data)
    ignored = [(key, why, "Remove it, or change the setting that makes it unused.") for key, why in ignored]
    ignored += unread_cache_keys(cfg.task, cfg.cache.mode, cfg.cache.topk)
    for key, why, fix in ignored:
        if _value(cfg, key) != _value(default, key):
            raise ConfigError(f"{key}={_value(cfg, key)!r} would be ignored: {why}. {fix}")
