"""The errors a user's input causes. Every layer raises them and the CLI prints each as one line, so they live
at the bottom of the package (they import nothing of it)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad preset, key or value; the message is one line naming the file or key."""


class UserError(RuntimeError):
    """An error caused by the user's input; printed as one line without a traceback."""


class DataError(ConfigError):
    """Unusable data (nothing readable, too many unreadable items); the message is one line."""

