#!/usr/bin/env bash
# The embedded default: installs .venv/ (torch pinned), then runs the whole pipeline on the synthetic dataset
# with tiny presets (tools/demo.py: synth -> pretrain -> finetune x2 -> multi-view eval -> visualize -> image
# pretrain -> summary). Re-running reuses .venv/ and data/synth; the runs are redone under runs/demo.
set -euo pipefail
cd "$(dirname "$0")"
tools/setup.sh --no-slurm
exec .venv/bin/python tools/demo.py "$@"
