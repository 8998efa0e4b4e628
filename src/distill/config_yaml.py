"""Reading config YAML (files, run folders' config.yaml and key=value overrides) with limits.

A config is a small hand-written file. yaml.safe_load expands aliases, so a 353-byte "billion
laughs" of nested aliases grew to gigabytes (and a 39 MB error message); here aliases are
refused and the size, node count and nesting depth are capped before anything is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, clip

MAX_CONFIG_BYTES = 1 << 20
MAX_YAML_NODES = 10_000
MAX_YAML_DEPTH = 50


class AliasRefused(ConfigError):
    """The YAML text uses an alias (*name)."""


class _ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses aliases and stops past MAX_YAML_NODES nodes or
    MAX_YAML_DEPTH levels, before anything is expanded or built."""

    def __init__(self, stream, source: str):
        super().__init__(stream)
        self.source, self.nodes, self.depth = source, 0, 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            anchor = clip(str(self.peek_event().anchor), 60)
            raise AliasRefused(
                f"{self.source} uses the YAML alias *{anchor}; configs may not use anchors and "
                "aliases (&name / *name). Write the repeated value out in full."
            )
        self.nodes += 1
        if self.nodes > MAX_YAML_NODES or self.depth >= MAX_YAML_DEPTH:
            rule = (f"more than {MAX_YAML_NODES} values" if self.nodes > MAX_YAML_NODES
                    else f"values nested more than {MAX_YAML_DEPTH} levels deep")
            raise ConfigError(f"{self.source} holds {rule}, more than a run config needs; "
                              "check that it is the config you meant.")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def load_yaml(text: str, source: str) -> Any:
    """The YAML in `text` (read from `source`, e.g. "Config file 'a.yaml'"), with the limits above."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source} is {len(text)} characters long; a config may be at most "
                          f"{MAX_CONFIG_BYTES} (1 MiB). Check that it is the config you meant.")
    loader = _ConfigLoader(text, source)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_text(p: Path) -> str:
    """The text of config file `p`, refused unread when it is larger than any config."""
    size = p.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"Config file '{p}' is {size} bytes; a config may be at most "
                          f"{MAX_CONFIG_BYTES} (1 MiB). Check that it is the config you meant.")
    return p.read_text()
