"""Errors a user can fix. The entrypoints print their message (one sentence) and exit non-zero."""


class UserError(Exception):
    """Base class: a problem with the user's data, config or files, not a bug in the runner."""
    exit_code = 2


class ConfigError(UserError, ValueError):
    """A config value is invalid; the message names the key and the value."""


class DataError(UserError, ValueError):
    """A dataset problem; the message names the file, folder or key at fault."""


class BadImageError(DataError):
    """One image file could not be decoded."""
