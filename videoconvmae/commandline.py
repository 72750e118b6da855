"""What every layer's ``cli.py`` shares: PRESET + overrides arguments, the config they make, printing, the failure
log. The top-level ``cli.py`` imports the layer CLIs to register them, so they must not import it back: this module
sits below every layer and imports only the config and the errors."""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

from videoconvmae.config import Config, load_config

_failure_log: Path | None = None  # where an unexpected error's traceback goes (the run folder's log.txt)


def set_failure_log(path: str | os.PathLike) -> None:
    """Commands with a run folder call this once they know it: a crash's traceback is appended there."""
    global _failure_log
    _failure_log = Path(path)


def write_traceback(e: BaseException, command: str) -> str:
    """Append the traceback to the run's log.txt (else a temp file); returns where it went."""
    fallback = Path(tempfile.gettempdir()) / f"videoconvmae-{command}-{os.getpid()}.log"
    text = f"{time.strftime('%Y-%m-%d %H:%M:%S')} [error] {command} failed:\n{''.join(traceback.format_exception(e))}"
    for path in dict.fromkeys(p for p in (_failure_log, fallback) if p is not None):
        try:  # the run folder may be the disk that filled up
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as f:
                f.write(text)
            return str(path)
        except OSError:
            continue
    return "nowhere: no writable log file"


def add_config_args(parser: argparse.ArgumentParser, preset_required: bool = True) -> None:
    """PRESET (a name in configs/ or a YAML path) and ``key.sub=value`` overrides."""
    parser.add_argument("preset", nargs=None if preset_required else "?",
                        help="config preset: a name in configs/ (see `videoconvmae config list`) or a YAML path")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")


class AnyOrderParser(argparse.ArgumentParser):
    """Options between positionals (``features CKPT ANN --out DIR key.sub=value``): argparse's intermixed parsing.

    Plain argparse hands every positional it sees before the first option to the positionals at once and then
    rejects the words after ``--out DIR`` as unrecognized."""

    _parsing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._parsing:  # parse_known_intermixed_args calls back into parse_known_args
            return super().parse_known_args(args, namespace)
        self._parsing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._parsing = False


def add_any_order_parser(subparsers: argparse._SubParsersAction, name: str, **kwargs) -> argparse.ArgumentParser:
    """``subparsers.add_parser`` for a command whose words and options may come in any order."""
    default_class, subparsers._parser_class = subparsers._parser_class, AnyOrderParser
    try:
        return subparsers.add_parser(name, **kwargs)
    finally:
        subparsers._parser_class = default_class


def config_from_args(args: argparse.Namespace, task: str | None = None) -> Config:
    preset, overrides = getattr(args, "preset", None), list(args.overrides)
    if preset and "=" in preset:  # an optional PRESET left out: the first word is already an override
        preset, overrides = None, [preset, *overrides]
    return load_config(preset, overrides, task=task)


def emit(text: str) -> None:
    """Print ``text`` to stdout; a reader that stopped reading (``videoconvmae models | head``) ends the command
    quietly instead of a BrokenPipeError traceback."""
    try:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would flush stdout again at exit and report the broken pipe there: point it at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None


def plain_text(text: str | None) -> str | None:
    """Help text without reST markup (the docstrings it comes from use it): ``x`` / :role:`x` -> x."""
    if not text:
        return text
    return re.sub(r"(?::\w+:)?``?([^`]+?)``?", r"\1", text)
