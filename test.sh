#!/usr/bin/env bash
# Installs what the tests need (.venv/, Debian packages), checks style and the import contract, runs the tests.
set -euo pipefail
cd "$(dirname "$0")"
tools/setup.sh
.venv/bin/ruff check videoconvmae tests bench tools
.venv/bin/lint-imports --no-cache  # the layer contract in pyproject.toml: dependencies point down
exec .venv/bin/python -m pytest -q "$@"
