"""User-facing errors: the CLI prints their message as one paragraph and exits with status 2."""

import re
import reprlib

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


def _repr_limits() -> reprlib.Repr:
    r = reprlib.Repr()
    r.maxstring = r.maxother = 200
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = 20
    r.maxlevel = 4
    return r


_REPR = _repr_limits()


def short(value, limit: int = 200) -> str:
    """repr(value), cut to `limit` characters with '...': error messages that quote what the
    user wrote stay one short paragraph however long the input was (the repr of a huge
    string or list is never built whole)."""
    return clip(_REPR.repr(value), limit)


def clip(text: str, limit: int = 200) -> str:
    """`text` cut to `limit` characters, ending in '...' when it was longer."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
