"""Atomic, resumable checkpoints and the small exported weight files.

A checkpoint is never half-written: it is saved to a temp file in the same folder, fsync'ed, then renamed
over the final name (rename is atomic within a file system), and the folder is fsync'ed so the rename itself
survives a crash. Everything inside is a tensor or a plain Python value so ``torch.load(weights_only=True)``
reads it (numpy RNG state is converted to a tensor for that reason).
"""

from __future__ import annotations

import json
import os
import random
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes

CKPT_PATTERN = re.compile(r"checkpoint-(\d+)\.pt$")
REQUIRED_KEYS = ("model", "optimizer", "step", "epoch", "epoch_position", "rng", "config", "code_version")


def checkpoint_path(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step:08d}.pt"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on every platform; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> Path:
    """``write(file_object)`` into a temp file beside ``path``, fsync, rename over ``path``."""
    return atomic_write_all([(path, write)])[0]


def atomic_write_all(files: list[tuple[str | os.PathLike, Callable[[Any], None]]]) -> list[Path]:
    """Several files that belong together: every temp file is written and fsync'ed before the first rename, so
    a failed write (a full disk) leaves all of them as they were, never a mix of two runs."""
    paths = [Path(p) for p, _ in files]
    temps = [p.with_name(f".{p.name}.tmp{os.getpid()}") for p in paths]
    try:
        for tmp, (_, write) in zip(temps, files, strict=True):
            tmp.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in zip(temps, paths, strict=True):
            os.replace(tmp, path)
    finally:
        for tmp in temps:
            if tmp.exists():
                tmp.unlink()
    for folder in dict.fromkeys(p.parent for p in paths):
        _fsync_dir(folder)
    return paths


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f))


# ---------------------------------------------------------------------------------------------- RNG state
def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict:
    """python, numpy, torch (CPU + CUDA) and named generators, as tensors / plain values."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss),
                  float(np_gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }
    return state


def set_rng_state(state: dict, generators: dict[str, torch.Generator] | None = None) -> None:
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, keys, pos, has_gauss, np_gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for key, g in (generators or {}).items():
        if key in state.get("generators", {}):
            g.set_state(state["generators"][key])


# ---------------------------------------------------------------------------------------------- finding / loading
def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a training checkpoint (``weights_only=True``) and check it has the full state."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a checkpoint dict, got {type(ckpt).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: not a training checkpoint (missing {', '.join(missing)})")
    return ckpt


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Checkpoints in ``output_dir``, newest (highest step) first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CKPT_PATTERN.fullmatch(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def find_resume(output_dir: str | os.PathLike) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads; a damaged one is skipped with a warning."""
    for path in list_checkpoints(output_dir):
        try:
            return path, load_checkpoint(path)
        except Exception as e:  # any unreadable file: truncated zip, wrong content, ...
            warnings.warn(f"skipping damaged checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0]}",
                          stacklevel=2)
    return None


def checkpoint_step(path: str | os.PathLike) -> int:
    m = CKPT_PATTERN.fullmatch(Path(path).name)
    if m is None:
        raise ValueError(f"{path}: not a checkpoint-<step>.pt name")
    return int(m.group(1))


def prune_checkpoints(own: list[Path], keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` highest steps of ``own`` and return those kept.

    ``own`` is this run's valid checkpoints (the one it resumed from, those before it, those it wrote): a
    damaged file or another run's checkpoint in the folder is never a candidate, so it can neither push this
    run's checkpoints out nor be deleted by it.
    """
    ranked = sorted(set(own), key=checkpoint_step, reverse=True)
    for old in ranked[keep_last:]:
        old.unlink(missing_ok=True)
    return ranked[:keep_last]


# ---------------------------------------------------------------------------------------------- exported weights
def export_weights(state_dict: dict[str, torch.Tensor], config: dict, output_dir: str | os.PathLike,
                   stem: str = "weights") -> tuple[Path, Path]:
    """``weights.pt`` (``{"model", "config"}``, weights_only-loadable) and ``weights.safetensors``."""
    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    # safetensors refuses tensors that share storage; clones make each one its own.
    data = safetensors_bytes({k: v.clone() for k, v in state.items()}, metadata={"config": json.dumps(config)})
    out = Path(output_dir)
    pt, st = atomic_write_all([(out / f"{stem}.pt", lambda f: torch.save({"model": state, "config": config}, f)),
                               (out / f"{stem}.safetensors", lambda f: f.write(data))])
    return pt, st
