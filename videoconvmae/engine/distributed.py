"""Process-group setup. ``init_distributed`` is the ONE place that reads the rendezvous variables.

The engine reads torch's variables only (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT): torchrun
sets them, the launch layer exports them for a submitit job (submitit's TorchDistributedEnvironment) and, for a
plain ``srun videoconvmae ...`` task, from Slurm's (``launch/srun.py``, called by the CLI). The engine never
imports the launch layer, reads no Slurm variable and runs no Slurm tool.
"""

from __future__ import annotations

import os
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


def _env_int(env: dict, *names: str, default: int) -> int:
    for name in names:
        if env.get(name, "") != "":
            return int(env[name])
    return default


def read_env(env: dict | None = None) -> dict:
    """rank, world_size, local_rank, master_addr, master_port from torch's variables (one process without them)."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun / explicit env://
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = _env_int(env, "LOCAL_RANK", default=0)
        addr = env.get("MASTER_ADDR", "127.0.0.1")
        port = _env_int(env, "MASTER_PORT", default=DEFAULT_PORT)
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


def multi_process() -> bool:
    """A process group of 2+ ranks: collectives are needed (every helper below is a no-op otherwise)."""
    return dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks."""
    if multi_process():
        dist.all_reduce(t)
    return t


def barrier() -> None:
    if multi_process():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's value on every rank."""
    if not multi_process():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj) -> list:
    """Every rank's ``obj`` in rank order (one process: ``[obj]``)."""
    if not multi_process():
        return [obj]
    box = [None] * dist.get_world_size()
    dist.all_gather_object(box, obj)
    return box
