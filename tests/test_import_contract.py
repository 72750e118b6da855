"""The layer contract (pyproject.toml [tool.importlinter], run by test.sh as `lint-imports`) holds for the tree and
catches an upward import."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT.is_file(), reason="import-linter is not installed (tools/setup.sh)")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}  # the copy's package, not the installed one
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120)


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "videoconvmae", tmp_path / "videoconvmae", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_the_contract():
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "broken"), [
    ("models/registry.py", "import videoconvmae.engine", "videoconvmae.models is not allowed to import "
                                                          "videoconvmae.engine"),
    ("data/records.py", "from videoconvmae.config import Config", "videoconvmae.data.records is not allowed to "
                                                                   "import videoconvmae.config"),
    ("engine/distributed.py", "import submitit", "videoconvmae.engine is not allowed to import submitit"),
])
def test_an_injected_forbidden_import_fails(tmp_path, module, line, broken):
    root = _copy(tmp_path)
    path = root / "videoconvmae" / module
    path.write_text(path.read_text() + f"\n{line}  # injected\n")
    result = _lint(root)
    assert result.returncode == 1, result.stdout + result.stderr
    assert broken in result.stdout
