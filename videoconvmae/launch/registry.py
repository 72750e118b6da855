"""This project's submitted jobs: a small JSON-lines registry, their Slurm state, and one-line failures.

One line per submitted job (array tasks one line each) in ``slurm.registry`` or ``$VIDEOCONVMAE_JOBS`` or
``~/.videoconvmae/jobs.jsonl``; appended with O_APPEND, never rewritten. States come from submitit (one
``sacct`` call for all Slurm jobs, through its watcher); a failed job's error is read from submitit's result
pickle (the exception line) or, when the job died without one (killed, out of memory, time limit), from sacct's
state and the log's last line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import submitit
from submitit.core import utils as submitit_utils

FINISHED_OK = {"COMPLETED"}
FAILED_STATES = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
                 "DEADLINE", "ERROR"}


def registry_path(configured: str = "") -> Path:
    """``slurm.registry``, else $VIDEOCONVMAE_JOBS, else ~/.videoconvmae/jobs.jsonl."""
    path = configured or os.environ.get("VIDEOCONVMAE_JOBS") or str(Path.home() / ".videoconvmae" / "jobs.jsonl")
    return Path(path).expanduser()


def append(records: list[dict], configured: str = "") -> Path:
    path = registry_path(configured)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    return path


def read(configured: str = "") -> list[dict]:
    """Every record, oldest first; a damaged line is skipped (the file is append-only, a crash can cut one)."""
    path = registry_path(configured)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def record(job: Any, *, kind: str, task: str, preset: str, overrides: list[str], output_dir: str,
           cluster: str, name: str = "") -> dict:
    """The registry line for one submitted submitit job."""
    return {
        "job_id": str(job.job_id),
        "kind": kind,
        "task": task,
        "name": name,
        "preset": preset,
        "overrides": list(overrides),
        "output_dir": str(output_dir),
        "folder": str(job.paths.folder),
        "stdout": str(job.paths.stdout),
        "stderr": str(job.paths.stderr),
        "tasks": job.num_tasks,
        "cluster": cluster,
        "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def job_from_record(rec: dict) -> submitit.Job:
    cls = submitit.SlurmJob if rec.get("cluster") == "slurm" else submitit.LocalJob
    return cls(folder=rec["folder"], job_id=rec["job_id"], tasks=list(range(int(rec.get("tasks", 1)))))


def states(records: list[dict]) -> list[str]:
    """The state of each record's job: Slurm's (via submitit / sacct, one call), or from the result pickle."""
    jobs = [job_from_record(r) for r in records]  # creating them registers them with the watcher: one sacct call
    out = []
    for rec, job in zip(records, jobs):
        outcome = _outcome(job)
        if rec.get("cluster") == "slurm":
            try:
                state = job.watcher.get_state(job.job_id, mode="standard")
            except Exception:  # noqa: BLE001 - sacct missing or down: say so in the state column
                state = "UNKNOWN"
            if outcome and state.split()[0] not in FINISHED_OK | FAILED_STATES:
                # the result pickle is written before Slurm marks the job finished: it is the outcome
                state = "COMPLETED" if outcome == "success" else "FAILED"
        else:
            state = {"success": "COMPLETED", "error": "FAILED"}.get(outcome or "", "RUNNING?")
        out.append(state.split()[0])  # "CANCELLED by 0" -> "CANCELLED"
    return out


def _tasks(job: submitit.Job) -> list[submitit.Job]:
    return [job.task(i) for i in range(job.num_tasks)] if job.num_tasks > 1 else [job]


def _task_outcome(task: submitit.Job) -> str | None:
    """'success' / 'error' from the task's result pickle; None while it has none."""
    path = task.paths.result_pickle
    try:
        return submitit_utils.pickle_load(path)[0] if path.exists() else None
    except Exception:  # noqa: BLE001 - a half-written pickle: not finished yet
        return None


def _outcome(job: submitit.Job) -> str | None:
    """'error' when a task failed, 'success' when every task returned, None while any is unfinished."""
    outcomes = [_task_outcome(task) for task in _tasks(job)]
    if "error" in outcomes:
        return "error"
    return "success" if all(o == "success" for o in outcomes) else None


def failing_task(job: submitit.Job) -> submitit.Job:
    """The first task whose result is an error (its log is the one to read), else task 0."""
    return next((task for task in _tasks(job) if _task_outcome(task) == "error"), _tasks(job)[0])


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def error_summary(job: submitit.Job, state: str = "") -> str:
    """The failing exception as ``Type: message`` (module path dropped), else the Slurm state + log's last line."""
    task = failing_task(job)
    path = task.paths.result_pickle
    if path.exists():
        try:
            outcome, payload = submitit_utils.pickle_load(path)
        except Exception:  # noqa: BLE001
            outcome, payload = "", ""
        if outcome == "error":
            line = _last_line(str(payload))
            return re.sub(r"^(?:[A-Za-z_][\w]*\.)+(?=\w+(?:Error|Exception|Exit)?:)", "", line)
    log_tail = ""
    with contextlib.suppress(OSError):
        log_tail = _last_line(Path(task.paths.stderr).read_text(errors="replace"))
    state = state or "died without a result"
    return f"{state}" + (f" ({log_tail})" if log_tail else "")


def failure_line(job: submitit.Job, what: str = "", state: str = "") -> str:
    """ONE readable line for a failed job: what failed, why, and the log to read (the failing task's)."""
    label = f"job {job.job_id}" + (f" ({what})" if what else "")
    return f"{label} failed: {error_summary(job, state)} [log: {failing_task(job).paths.stderr}]"
