"""A submitit executor built from the typed ``slurm.*`` section: the only place resources become sbatch flags.

``slurm.cluster=slurm`` submits with sbatch; ``local`` runs the same pickled job in subprocesses on this
machine (submitit's LocalExecutor, with its time-limit signal); ``debug`` runs it in this process at
``job.result()``. One task per GPU (``tasks_per_node = gpus_per_node``); a CPU job has ``slurm.tasks_per_node``
tasks per node (default 1). A multi-node job is ``slurm.nodes`` x that many ranks; the rendezvous comes from the
job itself (job.py).
The job folder (pickles and ``%j`` logs) lives under the run's output folder unless ``slurm.folder`` says
otherwise; nothing here knows a cluster path.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Any

import submitit

from videoconvmae.errors import ConfigError
from videoconvmae.launch.config import SlurmConfig

CLUSTERS = ("slurm", "local", "debug")


def check_slurm_config(s: SlurmConfig) -> None:
    """One-line ConfigError for values sbatch would reject later with a less readable message."""
    if s.cluster not in CLUSTERS:
        raise ConfigError(f"slurm.cluster: expected one of {'|'.join(CLUSTERS)}, got {s.cluster!r}")
    for key in ("nodes", "cpus_per_task", "timeout_min", "array_parallelism"):
        if getattr(s, key) < 1:
            raise ConfigError(f"slurm.{key}: expected a positive integer, got {getattr(s, key)}")
    for key in ("gpus_per_node", "tasks_per_node", "mem_gb", "signal_delay_s", "array", "max_num_timeout"):
        if getattr(s, key) < 0:
            raise ConfigError(f"slurm.{key}: expected an integer >= 0, got {getattr(s, key)}")
    if s.gpus_per_node > 0 and s.tasks_per_node not in (0, s.gpus_per_node):
        raise ConfigError(f"slurm.tasks_per_node: one task per GPU, expected 0 or {s.gpus_per_node} "
                          f"(slurm.gpus_per_node), got {s.tasks_per_node}")
    if s.cluster == "local" and s.nodes != 1:
        raise ConfigError(f"slurm.nodes: slurm.cluster=local runs on this machine only, expected 1, got {s.nodes}")
    extra_options(s)
    if s.cluster == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError("slurm.cluster=slurm but `sbatch` is not on PATH (use slurm.cluster=local or debug here)")


def tasks_per_node(s: SlurmConfig) -> int:
    """One task per GPU; a CPU job runs ``slurm.tasks_per_node`` tasks per node (0 = 1)."""
    if s.gpus_per_node > 0:
        return s.gpus_per_node
    return max(1, s.tasks_per_node)


def extra_options(s: SlurmConfig) -> dict[str, str]:
    """``slurm.extra=[exclude=node1,mail-type=END]`` -> {"exclude": "node1", "mail-type": "END"}."""
    out = {}
    for item in s.extra:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"slurm.extra: expected sbatch options as key=value, got {item!r}")
        out[key.strip().lstrip("-")] = value.strip()
    return out


def executor_parameters(s: SlurmConfig) -> dict[str, Any]:
    """The AutoExecutor parameters for these resources (generic names + ``slurm_``-prefixed ones)."""
    params: dict[str, Any] = {
        "name": s.job_name,
        "nodes": s.nodes,
        "tasks_per_node": tasks_per_node(s),
        "cpus_per_task": s.cpus_per_task,
        "timeout_min": s.timeout_min,
        "slurm_signal_delay_s": s.signal_delay_s,
        "slurm_array_parallelism": s.array_parallelism,
    }
    if s.gpus_per_node > 0:
        params["gpus_per_node"] = s.gpus_per_node
    if s.mem_gb > 0:
        params["mem_gb"] = s.mem_gb
    for key in ("partition", "account", "qos", "constraint", "comment"):
        if getattr(s, key):
            params[f"slurm_{key}"] = getattr(s, key)
    if s.setup:
        params["slurm_setup"] = list(s.setup)
        params["local_setup"] = list(s.setup)
    # --requeue: `scontrol requeue` (what the job runs on preemption) is refused for a job that is not requeueable,
    # and clusters with JobRequeue=0 make that the default.
    params["slurm_additional_parameters"] = {"requeue": True, **extra_options(s)}
    return params


def job_folder(s: SlurmConfig, output_dir: str | Path) -> Path:
    """Where submitit keeps the pickles and the ``%j`` logs of this run's jobs."""
    return Path(s.folder).resolve() if s.folder else Path(output_dir).resolve() / "slurm"


def make_executor(s: SlurmConfig, output_dir: str | Path, **overrides: Any) -> submitit.AutoExecutor:
    """An AutoExecutor for ``s.cluster`` with these resources; ``overrides`` are extra executor parameters."""
    check_slurm_config(s)
    kwargs: dict[str, Any] = {"slurm_max_num_timeout": s.max_num_timeout, "local_max_num_timeout": s.max_num_timeout}
    if s.python and s.cluster == "slurm":
        kwargs["slurm_python"] = s.python
    executor = submitit.AutoExecutor(folder=job_folder(s, output_dir), cluster=s.cluster, **kwargs)
    executor.update_parameters(**{**executor_parameters(s), **overrides})
    return executor


def sbatch_flags(s: SlurmConfig, log_dir: str = "logs") -> list[str]:
    """The ``#SBATCH`` lines for the same resources, for the plain sbatch templates in slurm/."""
    flags = {
        "job-name": s.job_name,
        "nodes": s.nodes,
        "ntasks-per-node": tasks_per_node(s),
        "cpus-per-task": s.cpus_per_task,
        "time": s.timeout_min,
        "signal": f"B:USR2@{s.signal_delay_s}",
        "requeue": None,
        "open-mode": "append",
        "output": f"{log_dir}/%x_%j.out",
        "error": f"{log_dir}/%x_%j.err",
    }
    if s.gpus_per_node > 0:
        flags["gpus-per-node"] = s.gpus_per_node
    if s.mem_gb > 0:
        flags["mem"] = f"{s.mem_gb}G"
    for key in ("partition", "account", "qos", "constraint", "comment"):
        if getattr(s, key):
            flags[key] = getattr(s, key)
    flags.update(extra_options(s))
    return [f"#SBATCH --{k}" if v is None else f"#SBATCH --{k}={shlex.quote(str(v))}" for k, v in flags.items()]
