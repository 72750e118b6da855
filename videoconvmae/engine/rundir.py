"""One output folder, one run: the run lock, foreign runs, leftovers of a killed writer.

The lock is ``<output_dir>/run.lock`` held with ``flock``: the kernel drops it when its process dies, even on
``kill -9``, so a lock file left behind by a crash is recognised as stale (nobody holds it) and taken over, with
no pid guessing. The file names its holder (pid, host) so a refused process can say who is using the folder.
Where the file system has no ``flock`` (some network mounts), the pid recorded in the file is checked instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

from videoconvmae.engine.checkpoint import list_checkpoints
from videoconvmae.errors import ConfigError

LOCK_NAME = "run.lock"
TEMP_PATTERN = re.compile(r"^\..+\.tmp\d+$")  # artifacts.atomic_write's temp files
WEIGHT_FILES = ("weights.pt", "weights.safetensors", "weights_ema.pt", "weights_ema.safetensors")
RUN_FILES = (*WEIGHT_FILES, "config.yaml", "metrics.jsonl", "log.txt")  # what train.overwrite removes


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """``with RunLock(folder):`` or ``acquire()`` / ``release()``; ``taken_over`` describes a stale lock."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.taken_over = ""
        self._fd: int | None = None

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> RunLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        holder = self._holder()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"train.output_dir={self.path.parent}: in use by pid {holder.get('pid', '?')} on "
                              f"{holder.get('host', '?')} (lock {self.path}); wait for it, stop it, or choose "
                              "another train.output_dir") from None
        except OSError:  # no flock on this file system: trust a live pid on this host
            pid = holder.get("pid")
            if pid and pid != os.getpid() and holder.get("host") == socket.gethostname() and _pid_alive(int(pid)):
                os.close(fd)
                raise ConfigError(f"train.output_dir={self.path.parent}: in use by pid {pid} (lock {self.path}); "
                                  "wait for it, stop it, or choose another train.output_dir") from None
        if holder.get("pid") and holder.get("pid") != os.getpid():
            self.taken_over = (f"took over the stale lock {self.path} of pid {holder['pid']} on "
                               f"{holder.get('host', '?')} (that process is gone)")
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": round(time.time(), 3)})
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # a clean exit leaves no holder to report
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete temp files of an atomic write that never finished (the writer was killed). Call with the lock
    held: then no live process of this run is writing them."""
    folder = Path(folder)
    stale = [p for p in folder.iterdir() if p.is_file() and TEMP_PATTERN.match(p.name)] if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def previous_run_files(folder: str | os.PathLike) -> list[Path]:
    """Checkpoints and exported weights of a run already in ``folder``."""
    folder = Path(folder)
    return [*list_checkpoints(folder), *[folder / n for n in WEIGHT_FILES if (folder / n).is_file()]]


def claim_folder(folder: str | os.PathLike, resume: str, overwrite: bool) -> str:
    """Refuse to start a fresh run (``train.resume=none`` or a checkpoint from elsewhere) in a folder that holds
    another run, unless ``overwrite``: then that run's files are removed. Returns a note for the log ('' if
    nothing was removed)."""
    folder = Path(folder)
    if resume == "auto" or (resume != "none" and Path(resume).resolve().parent == folder.resolve()):
        return ""
    found = [p for p in previous_run_files(folder) if resume == "none" or p.resolve() != Path(resume).resolve()]
    if not found:
        return ""
    if not overwrite:
        raise ConfigError(f"train.output_dir={folder} holds another run ({found[0].name}"
                          f"{f' and {len(found) - 1} more' if len(found) > 1 else ''}); continue it with "
                          "train.resume=auto, choose a new train.output_dir, or replace it with train.overwrite=true")
    for p in [*list_checkpoints(folder), *[folder / n for n in RUN_FILES]]:
        p.unlink(missing_ok=True)
    shutil.rmtree(folder / "tb", ignore_errors=True)
    return f"train.overwrite: removed the previous run's {len(found)} checkpoint / weight files from {folder}"
