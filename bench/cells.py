"""What the grid benches share: one cell = a code string run in a fresh interpreter at a torch thread count."""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


def run_cell_code(code: str, work: Path, threads: int, what: str) -> dict:
    """Run ``code`` with ``OMP_NUM_THREADS`` = ``threads``; its output goes to ``work``/log.txt and its line
    ``CELL {json}`` is the result. ``what`` names the cell in the error when it fails or prints no such line."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    work.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    (work / "log.txt").write_text(proc.stdout + proc.stderr)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("CELL ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"cell {what} failed (exit {proc.returncode}): see {work / 'log.txt'}")
    return json.loads(line[5:])


def spread(values: list[float]) -> str:
    """min / median / max."""
    return f"{min(values):5.1f} / {statistics.median(values):5.1f} / {max(values):5.1f}"


def weights_digest(path: Path) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every tensor of a weights.pt's model, in key order:
    equal digests are bitwise-equal weights."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(torch.load(path, weights_only=True)["model"].items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
