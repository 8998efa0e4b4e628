"""User-facing errors: the CLI prints their message as one paragraph and exits with status 2."""


class DistillError(Exception):
    """A mistake the user can fix (bad config, missing file, wrong model). No traceback is shown."""


class ConfigError(DistillError):
    """The run configuration is invalid."""
