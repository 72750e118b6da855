"""The one command line: ``videoconvmae <command> ...``.

Each layer registers its own subcommands (``register(subparsers)`` in its ``cli.py``); this file only
wires them together and turns known errors into one readable line. Run commands share one form:
``videoconvmae <task> PRESET [key.sub=value ...]``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from videoconvmae.commandline import (
    add_config_args,
    config_from_args,
    emit,
    plain_text,
    write_traceback,
)
from videoconvmae.config import describe_config, list_presets, to_yaml
from videoconvmae.errors import ConfigError, UserError, one_line

DESCRIPTION = ("VideoConvMAE / ConvMAE: pretraining, finetuning, linear probing, multi-view evaluation, feature "
               "extraction and Slurm launching. Run commands take a PRESET and key.sub=value overrides; "
               "`videoconvmae COMMAND --help` explains each command.")

# The layers whose cli.py registers subcommands (``register(subparsers)``).
COMMAND_MODULES = (
    "videoconvmae.models.cli",
    "videoconvmae.data.cli",
    "videoconvmae.engine.cli",
    "videoconvmae.eval.cli",
    "videoconvmae.launch.cli",
)


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
        importlib.import_module(name).register(sub)
    _finish_help(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from videoconvmae.launch.srun import torch_env_from_slurm

    torch_env_from_slurm()  # a plain srun task (slurm/ templates): the engine reads torch's variables only
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
        log = write_traceback(e, args.command)
        print(f"error: {args.command} failed: {one_line(e, with_type=True)} (traceback in {log}; "
              "VIDEOCONVMAE_DEBUG=1 re-raises)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
