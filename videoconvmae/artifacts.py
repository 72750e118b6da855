"""Reading and writing files: the one atomic writer and the one reader of weight files, at the bottom of the
package so that every layer writes and reads through them.

A written file is never half there: it goes to a temp file in the same folder, is fsync'ed, renamed over the
final name (atomic within a file system), and the folder is fsync'ed so the rename itself survives a crash.
Weight files: ``.safetensors`` (the config rides in its metadata) and everything else through
``torch.load(weights_only=True)`` (training checkpoints, ``weights.pt``, official ConvMAE ``.pth``).
torch and safetensors are imported inside the functions: the config layer writes through this module and must
not load torch.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from videoconvmae.errors import ConfigError, one_line


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in ``folder`` durable (not possible on every platform; the rename is atomic anyway)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_all(files: list[tuple[str | os.PathLike, Callable[[BinaryIO], Any]]]) -> list[Path]:
    """``write(binary file)`` for each ``(path, write)``. Every temp file is written and fsync'ed before the first
    rename, so a failed write (a full disk) leaves all of them as they were, never a mix of two runs."""
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
        fsync_dir(folder)
    return paths


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[BinaryIO], Any]) -> Path:
    """Write ``data`` (bytes, text as UTF-8, or ``write(binary file)``) to ``path`` atomically."""
    if isinstance(data, str):
        data = data.encode()
    write = (lambda f: f.write(data)) if isinstance(data, bytes) else data
    return atomic_write_all([(path, write)])[0]


def write_csv(path: str | os.PathLike, rows: Iterable[Sequence]) -> Path:
    """``rows`` (the header first) as a CSV file, atomically."""
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    return atomic_write(path, text.getvalue())


def read_artifact(path: str | os.PathLike, key: str = "checkpoint", tensors: bool = True) -> dict:
    """The dict stored in a weight file. ``.safetensors`` reads as ``{"model": tensors, "config": dict}`` (config
    from the metadata, absent when there is none), the rest as saved (``torch.load(weights_only=True)``).
    ``tensors=False`` is for reading the config only (safetensors: the header; else memory-mapped).
    Raises ConfigError ``<key>: <path>: ...`` in one line for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{key}: {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                obj = {"model": {k: f.get_tensor(k) for k in f.keys()}} if tensors else {}  # noqa: SIM118
            if meta.get("config"):
                obj["config"] = json.loads(meta["config"])
            return obj
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=not tensors)
    except Exception as e:  # noqa: BLE001 - a truncated file, a pickle that needs code, not a checkpoint at all
        raise ConfigError(f"{key}: {path}: cannot be loaded as a checkpoint ({one_line(e, with_type=True)})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{key}: {path}: expected a dict, got {type(obj).__name__}")
    return obj


def saved_config(path: str | os.PathLike, key: str = "checkpoint") -> dict | None:
    """The config dict saved with the weights (None when there is none), without reading every tensor."""
    config = read_artifact(path, key, tensors=False).get("config")
    return config if isinstance(config, dict) else None
