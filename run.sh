#!/usr/bin/env bash
# The embedded default: installs .venv/, then runs what exists of the pipeline on tiny presets.
set -euo pipefail
cd "$(dirname "$0")"
tools/setup.sh --no-slurm
.venv/bin/videoconvmae config show
