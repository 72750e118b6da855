"""A plain ``srun videoconvmae ...`` task (the slurm/ sbatch templates) has Slurm's variables, not torch's: the CLI
calls ``torch_env_from_slurm`` before any command, so the engine reads only RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT. torchrun's variables win when both are present (torchrun inside an sbatch script).
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping


def expand_nodelist(nodelist: str) -> list[str]:
    """``node[01-03,07],gpu5`` -> ``[node01, node02, node03, node07, gpu5]`` (Slurm's compressed host list).

    Parsed here rather than with ``scontrol show hostnames``: the engine runs no Slurm tool (a container may have
    none) and only reads the variables a plain ``srun`` task gets (the slurm/ sbatch templates).
    """
    hosts: list[str] = []
    for item in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,\[]*", nodelist):
        match = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", item)
        if not match:
            hosts.append(item)
            continue
        prefix, ranges, suffix = match.groups()
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            if not hi:
                hosts.append(f"{prefix}{lo}{suffix}")
                continue
            for i in range(int(lo), int(hi) + 1):
                hosts.append(f"{prefix}{str(i).zfill(len(lo))}{suffix}")
    return hosts


def torch_env_from_slurm(env: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set torch's rendezvous variables in ``env`` (default ``os.environ``) from an srun task's SLURM_PROCID /
    SLURM_NTASKS / SLURM_LOCALID / first host of SLURM_JOB_NODELIST, unless RANK is already set; returns them."""
    env = os.environ if env is None else env
    if "RANK" in env or "SLURM_PROCID" not in env or "SLURM_NTASKS" not in env:
        return {}
    from videoconvmae.engine.distributed import DEFAULT_PORT  # here: every command calls this, torch loads late

    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
    exported = {
        "RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_NTASKS"], "LOCAL_RANK": env.get("SLURM_LOCALID") or "0",
        "MASTER_ADDR": env.get("MASTER_ADDR") or (expand_nodelist(nodelist) or ["127.0.0.1"])[0],
        # A per-job port lets two jobs share a node; an explicit MASTER_PORT wins.
        "MASTER_PORT": env.get("MASTER_PORT") or str(DEFAULT_PORT + int(env.get("SLURM_JOB_ID") or "0") % 10000),
    }
    env.update(exported)
    return exported
