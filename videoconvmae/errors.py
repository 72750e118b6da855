"""The errors a user's input causes. Every layer raises them and the CLI prints each as one line, so they live
at the bottom of the package (they import nothing of it)."""

from __future__ import annotations

import re


def one_line(e: BaseException, with_type: bool = False) -> str:
    """The message of ``e`` as one line (``Type: message`` with ``with_type``; ``Type`` when there is none). An
    error re-raised from a DataLoader worker carries the worker's whole traceback: its last line is the original."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    if len(lines) > 1 and any(line.startswith("Original Traceback") for line in lines):
        text = re.sub(r"^[\w.]+: ", "", lines[-1])
    else:
        text = lines[0]
    return f"{type(e).__name__}: {text}" if with_type else text


class ConfigError(ValueError):
    """A bad preset, key or value; the message is one line naming the file or key."""


class UserError(RuntimeError):
    """An error caused by the user's input; printed as one line without a traceback."""


class DataError(ConfigError):
    """Unusable data (nothing readable, too many unreadable items); the message is one line."""

