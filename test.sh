#!/usr/bin/env bash
# Installs what the tests need (.venv/, Debian packages), checks style, runs the test suite.
set -euo pipefail
cd "$(dirname "$0")"
tools/setup.sh
.venv/bin/ruff check videoconvmae tests bench tools
exec .venv/bin/python -m pytest -q "$@"
