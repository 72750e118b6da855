"""The README cannot rot: its first lines are the two commands, and every `videoconvmae ...` line in its code
blocks parses with the real CLI; run commands resolve their preset and overrides (a dry run), launch commands
render their sbatch script without submitting."""

import os
import re
import shlex
from pathlib import Path

import pytest

from videoconvmae.cli import build_parser, main
from videoconvmae.config import REPO_ROOT, load_config

README = REPO_ROOT / "README.md"
RUN_TASKS = ("pretrain", "finetune", "linprobe")


def code_lines() -> list[str]:
    lines, inside = [], False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
            continue
        if inside and line.strip():
            lines.append(line.split(" #")[0].strip())
    return lines


def cli_lines() -> list[list[str]]:
    return [shlex.split(line)[1:] for line in code_lines() if line.startswith("videoconvmae ")]


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second():
    first_two = code_lines()[:2]
    assert first_two == ["./run.sh", "./test.sh"]
    for script in first_two:
        assert os.access(REPO_ROOT / script, os.X_OK)
    assert re.search(r"^exec \./test\.sh$", (REPO_ROOT / ".ci" / "run").read_text(), re.M)


def test_readme_has_cli_examples():
    commands = {words[0] for words in cli_lines()}
    assert {"pretrain", "finetune", "eval", "launch", "data", "config", "models"} <= commands


@pytest.mark.parametrize("words", cli_lines(), ids=lambda w: " ".join(w)[:60])
def test_readme_command_is_valid(words, capsys, tmp_path, monkeypatch):
    args = build_parser().parse_args(words)  # SystemExit on a wrong subcommand or flag
    if words[0] in RUN_TASKS:
        load_config(args.preset, args.overrides, task=words[0])
    elif words[0] == "launch":
        monkeypatch.chdir(tmp_path)
        assert main([*words[:1], "--sbatch", *words[1:]]) == 0
        assert "#SBATCH" in capsys.readouterr().out
    elif words[0] == "config":
        assert main(words) == 0
    elif words[0] == "eval":
        preset = next(w for w in words[1:] if "=" not in w and not Path(w).suffix)
        load_config(preset, [w for w in words if "=" in w], task="eval")


def test_every_fidelity_row_names_tests_that_exist():
    """FIDELITY.md: no row without a test, and every test it names exists (``file.py::name`` or ``::name`` for
    the file named before it in the row)."""
    import ast

    rows = [line for line in (REPO_ROOT / "FIDELITY.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| Choice")]
    assert len(rows) >= 25
    for row in rows:
        refs = [r for r in re.findall(r"`([^`]+)`", row.rsplit(" | ", 1)[-1]) if "::" in r]
        assert refs, f"FIDELITY.md row without a test: {row[:60]}"
        current = None
        for ref in refs:
            file, name = ref.split("::")
            current = file or current
            tree = ast.parse((REPO_ROOT / "tests" / current).read_text())
            assert name in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}, ref
