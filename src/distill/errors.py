"""User-facing errors: the CLI prints their message as one paragraph and exits with status 2."""

import re

# Terminal control sequences (colour, bold, cursor moves): CSI ... final byte, and OSC ... BEL/ST.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


class DistillError(Exception):
    """A mistake the user can fix (bad config, missing file, wrong model). No traceback is shown."""


class ConfigError(DistillError):
    """The run configuration is invalid."""


def plain(text: str) -> str:
    """`text` without terminal escape codes. Messages from libraries can carry them (torch's
    weights_only refusal is bold); an error message is plain text wherever it is printed."""
    return _ESCAPES.sub("", text)
