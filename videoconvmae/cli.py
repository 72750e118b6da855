"""The one command line: ``videoconvmae <command> ...``.

Each layer registers its own subcommands (``register(subparsers)`` in its ``cli.py``); this file only
wires them together and turns known errors into one readable line. Run commands share one form:
``videoconvmae <task> PRESET [key.sub=value ...]``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from videoconvmae.config import Config, ConfigError, describe_config, list_presets, load_config, to_yaml

DESCRIPTION = ("VideoConvMAE / ConvMAE: pretraining, finetuning, linear probing, multi-view evaluation, feature "
               "extraction and Slurm launching. Run commands take a PRESET and key.sub=value overrides; "
               "`videoconvmae COMMAND --help` explains each command.")

# Layers that contribute subcommands; a missing module simply contributes none.
COMMAND_MODULES = (
    "videoconvmae.models.cli",
    "videoconvmae.data.cli",
    "videoconvmae.engine.cli",
    "videoconvmae.eval.cli",
    "videoconvmae.launch.cli",
)


class UserError(RuntimeError):
    """An error caused by the user's input; printed as one line without a traceback."""


_failure_log: Path | None = None  # where an unexpected error's traceback goes (the run folder's log.txt)


def set_failure_log(path: str | os.PathLike) -> None:
    """Commands with a run folder call this once they know it: a crash's traceback is appended there."""
    global _failure_log
    _failure_log = Path(path)


def one_line(e: BaseException) -> str:
    """The message of ``e`` as one line. An error re-raised from a DataLoader worker carries the worker's whole
    traceback in its message: its last line is the original error."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    if len(lines) > 1 and any(line.startswith("Original Traceback") for line in lines):
        return re.sub(r"^[\w.]+: ", "", lines[-1])
    return lines[0]


def _write_traceback(e: BaseException, command: str) -> str:
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


def _config_show(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    emit(describe_config(cfg) if args.doc else to_yaml(cfg))
    return 0


def _config_list(args: argparse.Namespace) -> int:
    emit("\n".join(list_presets()))
    return 0


def _register_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="show resolved configs and list presets")
    csub = p.add_subparsers(dest="config_command", required=True)
    show = csub.add_parser("show", help="print the resolved config of a preset with overrides",
                           description="Print the config a run with PRESET and the overrides would use, as YAML "
                           "(config.yaml in a run folder has the same form). --doc adds each key's type and "
                           "meaning as a comment.")
    add_config_args(show, preset_required=False)
    show.add_argument("--doc", action="store_true", help="annotate every key with its type and one-line meaning")
    show.set_defaults(func=_config_show)
    lst = csub.add_parser("list", help="list preset names")
    lst.set_defaults(func=_config_list)


class _Version(argparse.Action):
    """``--version``: the package version and git commit, computed only when asked for."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from videoconvmae.config import code_version

        emit(f"videoconvmae {code_version()}")
        parser.exit()


def plain_text(text: str | None) -> str | None:
    """Help text without reST markup (the docstrings it comes from use it): ``x`` / :role:`x` -> x."""
    if not text:
        return text
    return re.sub(r"(?::\w+:)?``?([^`]+?)``?", r"\1", text)


def _finish_help(parser: argparse.ArgumentParser) -> None:
    """Every (sub)command gets a description (its one-line help when it has none); no reST in any help."""
    parser.description = plain_text(parser.description)
    for action in parser._actions:
        action.help = plain_text(action.help)
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                choice.help = plain_text(choice.help)
                sub = action.choices[choice.dest]
                if not sub.description and choice.help:
                    sub.description = choice.help[0].upper() + choice.help[1:] + "."
                _finish_help(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videoconvmae", description=DESCRIPTION)
    parser.add_argument("--version", action=_Version, help="print the version (and git commit) and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _register_config(sub)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(sub)
    _finish_help(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, UserError, ValueError, FileNotFoundError) as e:
        # Bad input (preset, key, value, file, size) -> one line. Set VIDEOCONVMAE_DEBUG=1 for the traceback.
        if os.environ.get("VIDEOCONVMAE_DEBUG"):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside a training loop (which saves and exits on its own)
        print(f"error: {args.command} interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # anything else: one line here, the traceback in the run's log.txt
        if os.environ.get("VIDEOCONVMAE_DEBUG"):
            raise
        log = _write_traceback(e, args.command)
        print(f"error: {args.command} failed: {type(e).__name__}: {one_line(e)} (traceback in {log}; "
              "VIDEOCONVMAE_DEBUG=1 re-raises)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
