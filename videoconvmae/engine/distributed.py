"""Process-group setup. ``init_distributed`` is the ONE place that reads torchrun and Slurm variables.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT, and so does the launch layer for a
submitit job (submitit's TorchDistributedEnvironment); a plain ``srun`` task (the slurm/ sbatch templates) has
SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID / SLURM_JOB_NODELIST instead. torchrun's win when both are present
(torchrun inside an sbatch script). The engine never imports the launch layer and runs no Slurm tool.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

DEFAULT_PORT = 29500


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0  # global rank of this process
    world_size: int = 1  # number of processes
    local_rank: int = 0  # rank on this node (selects the GPU)
    device: torch.device = torch.device("cpu")  # where this process computes

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


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


def _env_int(env: dict, *names: str, default: int) -> int:
    for name in names:
        if env.get(name, "") != "":
            return int(env[name])
    return default


def read_env(env: dict | None = None) -> dict:
    """rank, world_size, local_rank, master_addr, master_port from torchrun or Slurm variables."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun / explicit env://
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = _env_int(env, "LOCAL_RANK", default=0)
        addr = env.get("MASTER_ADDR", "127.0.0.1")
        port = _env_int(env, "MASTER_PORT", default=DEFAULT_PORT)
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        local = _env_int(env, "SLURM_LOCALID", default=0)
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
        addr = env.get("MASTER_ADDR") or (expand_nodelist(nodelist) or ["127.0.0.1"])[0]
        # A per-job port lets two jobs share a node; an explicit MASTER_PORT wins.
        port = _env_int(env, "MASTER_PORT", default=DEFAULT_PORT + int(env.get("SLURM_JOB_ID", "0")) % 10000)
    else:
        rank, world, local, addr, port = 0, 1, 0, "127.0.0.1", DEFAULT_PORT
    return {"rank": rank, "world_size": world, "local_rank": local, "master_addr": addr, "master_port": port}


def pick_device(device: str, local_rank: int) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is visible")
    if device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(backend: str = "auto", device: str = "auto") -> DistInfo:
    """Join the process group named by the environment (nothing to join for a single process)."""
    info = read_env()
    dev = pick_device(device, info["local_rank"])
    if info["world_size"] > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if dev.type == "cuda" else "gloo"
        os.environ["MASTER_ADDR"] = str(info["master_addr"])
        os.environ["MASTER_PORT"] = str(info["master_port"])
        dist.init_process_group(backend, init_method="env://", rank=info["rank"], world_size=info["world_size"],
                                device_id=dev if dev.type == "cuda" else None)
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), info["local_rank"], dev)
    return DistInfo(0, 1, info["local_rank"], dev)


def is_main_process() -> bool:
    """Rank 0 of the process group, or of the torchrun / Slurm environment (also once the group has ended)."""
    if dist.is_initialized():
        return dist.get_rank() == 0
    return read_env()["rank"] == 0


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op for one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's value on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
