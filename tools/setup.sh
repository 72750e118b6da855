#!/usr/bin/env bash
# Creates / refreshes .venv/ with torch pinned, and installs the Debian packages the project needs
# (FFmpeg libraries for torchcodec, a single-node Slurm for the launch tests). Idempotent and quick
# when everything is already there. Usage: tools/setup.sh [--no-slurm]
set -euo pipefail
cd "$(dirname "$0")/.."
want_slurm=1
[ "${1:-}" = "--no-slurm" ] && want_slurm=0

apt_pkgs=(libavcodec59 libavformat59 libavutil57 libswscale6 libswresample4 libavdevice59 libavfilter8)
[ "$want_slurm" = 1 ] && apt_pkgs+=(slurm-wlm munge slurmdbd mariadb-server)
missing=()
for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "[setup] apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "[setup] warning: missing Debian packages (${missing[*]}) and no root apt-get; torchcodec / Slurm tests may skip" >&2
  fi
fi

stamp_src=$(cat requirements.txt constraints.txt pyproject.toml | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.stamp 2>/dev/null)" != "$stamp_src" ]; then
  echo "[setup] creating .venv (torch pinned by constraints.txt)"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -r requirements.txt pytest ruff
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt --no-deps -e .
  echo "$stamp_src" > .venv/.stamp
fi
