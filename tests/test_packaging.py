"""`pip install -e .` into a fresh venv (torch pinned by constraints.txt) gives a working `videoconvmae`."""

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_editable_install_in_a_fresh_venv_gives_a_working_cli(tmp_path):
    env_dir = tmp_path / "venv"
    # No pip of its own (ensurepip costs seconds): this pip installs into it (`pip --python`, run by that interpreter).
    venv.create(env_dir, with_pip=False)
    pip = [sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"), "--disable-pip-version-check"]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    done = subprocess.run([*pip, "install", "-q", "--no-compile", "-c", str(REPO / "constraints.txt"), "-e", str(REPO)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    frozen = subprocess.run([*pip, "list", "--format=freeze"], capture_output=True, text=True, env=env).stdout
    versions = dict(line.split("==", 1) for line in frozen.split() if "==" in line)
    assert versions["torch"].startswith("2.13.0") and "timm" in versions  # came with it, torch pinned
    cli = env_dir / "bin" / "videoconvmae"
    help_out = subprocess.run([str(cli), "--help"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert help_out.returncode == 0 and "pretrain" in help_out.stdout, help_out.stderr[-2000:]
    models = subprocess.run([str(cli), "models", "--filter", "convmae_base_cls"], capture_output=True, text=True,
                            env=env, cwd=tmp_path)
    assert models.returncode == 0 and models.stdout.split() == ["convmae_base_cls", "videoconvmae_base_cls"]
