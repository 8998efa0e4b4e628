"""Reading a config that distill saved itself, written by an older distill.

Up to commit bbe454d a run folder's config.yaml (and a --seeds folder's seeds-run.json) held
the flat schema: one section for both tasks, every key at its value. A classifier's config
also held the language-model keys at their defaults (data.tokenizer, data.max_length,
data.packing, data.mask_prompt and an `lm:` section), a language model's the classifier's
(data.augment, size, crop, label_column, label_fraction, unlabelled_path), and the cache was
`cache: <mode>` plus top-level cache_dtype, cache_topk and cache_dir.

`migrate` turns such a config into the current schema:
- cache_dtype / cache_topk / cache_dir move into the cache section (cache.dtype, .topk, .dir);
- the other task's keys are dropped where they hold the flat schema's defaults (FLAT_DEFAULTS).
  A key away from its default is kept, so validation refuses it as before (the old code
  refused such a key too, so distill never saved one);
- cache keys the run did not read are dropped (config_schema.unread_cache_keys: cache_dir
  without disk, cache_topk/cache_dtype with the cache off; a language model's memory or disk
  cache without top-k, which ran with the cache off, is recorded as off). The current check
  refuses them, and the run's results never depended on them.
A config in the current schema comes back unchanged, but for cache keys its run did not read
(a run folder written before check_unused refused them, as in 3c5c1ff).

It is applied only to configs distill wrote: a run folder's config.yaml (`saved_by_distill`:
the folder holds distill's run marker, or is a run folder from before markers,
run_folder.legacy), wherever it is read from (eval, report, export, --resume, or `distill run
RUN/config.yaml` to start a new run like it), and a --seeds record. A hand-written config with
the old keys keeps getting the errors that name the new ones (config.RENAMED).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from .config_schema import DEFAULT_TASK, unread_cache_keys
from .run_folder import legacy, owned

FLAT_CACHE = {"cache_dtype": "dtype", "cache_topk": "topk", "cache_dir": "dir"}

# The other task's keys as the flat schema saved them, at its defaults: (section, key) -> value.
# These are the defaults of bbe454d's RunConfig, frozen here: the current schema may change its
# own defaults, the configs saved then do not change.
_ON_POLICY = {"fraction": 0.0, "temperature": 1.0, "max_new_tokens": 32, "prompt_tokens": 16}
FLAT_DEFAULTS: dict[str, dict[tuple[str, ...], Any]] = {
    "classification": {
        ("data", "tokenizer"): "byte", ("data", "max_length"): 128, ("data", "packing"): None,
        ("data", "mask_prompt"): True,
        ("lm",): {"shared_vocab": None, "chunk": None, "on_policy": _ON_POLICY},
    },
    "language_model": {
        ("data", "augment"): "none", ("data", "size"): None, ("data", "crop"): None,
        ("data", "label_column"): "label", ("data", "label_fraction"): 0.1,
        ("data", "unlabelled_path"): None,
    },
}


def saved_by_distill(path: str | Path) -> bool:
    """Whether `path` is the config.yaml distill wrote into a run folder."""
    path = Path(path)
    folder = path.parent
    return path.name == "config.yaml" and (owned(folder, "run") or legacy(folder, "run"))


def migrate(raw: dict) -> dict:
    """A config distill saved (any version) in the current schema (module docstring); a copy."""
    if not isinstance(raw, dict):
        return raw  # not a config distill saved: validation says what is wrong
    raw = copy.deepcopy(raw)
    task = raw.get("task", DEFAULT_TASK)
    for (*parents, key), default in (FLAT_DEFAULTS.get(task, {}) if isinstance(task, str) else {}).items():
        node = raw
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and key in node and node[key] == default:
            del node[key]
    _cache_section(raw, task)
    return raw


def _cache_section(raw: dict, task: Any) -> None:
    """cache: <mode> plus cache_* keys -> one cache section, without the keys the run ignored."""
    flat = {new: raw.pop(old) for old, new in FLAT_CACHE.items() if old in raw}
    if "cache" not in raw and not flat:
        return
    cache = raw.get("cache", "auto")
    if isinstance(cache, str | bool):
        cache = {"mode": "off" if cache is False else cache}
    if not isinstance(cache, dict):
        return  # not distill's: validation says what is wrong
    cache = {**cache, **flat}
    mode, topk = cache.get("mode", "auto"), cache.get("topk")
    if not isinstance(mode, str) or not (topk is None or isinstance(topk, int)):
        raw["cache"] = cache
        return
    for key, _, _ in unread_cache_keys(str(task), mode, topk):
        field = key.split(".")[1]
        if field == "mode":
            cache["mode"] = "off"  # what the run did: no cache
        else:
            cache.pop(field, None)
    raw["cache"] = cache
