"""``train.parallel=fsdp``: FSDP2 sharding and sharded (torch.distributed.checkpoint) checkpoints.

Sharding follows torchtitan's recipe: ``fully_shard`` on every transformer block (encoder ``blocks3`` and
``decoder_blocks``), then on the root, which takes every parameter left over (embeddings, norms, the conv stages,
the head). The conv stages 1-2 stay in the root unit: they hold ~5% of ConvMAE-B's parameters, and their blocks
run with a layout argument (models/sparse.py) that FSDP's hooks were never tested with. ``train.precision``
becomes a ``MixedPrecisionPolicy`` (parameters and the forward in bf16 / fp16, gradients reduced in fp32);
``train.fsdp_cpu_offload`` keeps the sharded parameters, gradients and optimizer state in CPU memory (FSDP2's
``CPUOffloadPolicy``; it needs an accelerator, the trainer refuses it on CPU). Only the pretrain path is
covered: in-training evaluation (ranks with unequal val shares would run unequal numbers of FSDP collectives),
EMA and the linear-probe export are refused by ``trainer.check_fsdp``.

A checkpoint is a folder ``checkpoint-<step>.dcp``: every rank writes its own shard of the model and optimizer
(``dcp.save``) at the same step boundary into ``.checkpoint-<step>.dcp.tmp``; after a barrier rank 0 adds
``state.pt`` (step, schedule, scaler, sampler position, every rank's RNG and skip counts, config: the DDP
checkpoint's other keys) and renames the folder. A folder with the final name is therefore complete, and
``find_resume`` takes the newest one. DCP reshards on load: the same folder loads into any world size, one
process without a process group included (``load_model``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from videoconvmae.artifacts import fsync_dir, read_artifact
from videoconvmae.engine.checkpoint import atomic_torch_save, first_loadable, list_checkpoints
from videoconvmae.engine.distributed import barrier, multi_process

DCP_PATTERN = re.compile(r"checkpoint-(\d+)\.dcp$")
STATE_FILE = "state.pt"  # inside a DCP folder: everything but the model and optimizer tensors
SHARDED_BLOCKS = ("blocks3", "decoder_blocks")  # module lists whose items are FSDP units (see the docstring)
PARALLEL_MODES = ("ddp", "fsdp")


def mixed_precision(precision: str) -> MixedPrecisionPolicy:
    """fp32: no casting; bf16 / fp16: parameters and the forward in that dtype, gradients reduced in fp32."""
    if precision == "fp32":
        return MixedPrecisionPolicy()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def shard_model(model: nn.Module, precision: str = "fp32", cpu_offload: bool = False) -> nn.Module:
    """FSDP2 in place: each block of ``SHARDED_BLOCKS``, then the root. Needs an initialized process group."""
    # The loop only reads the returned loss; FSDP warns about every view in the output dict on each step.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    if not multi_process():
        raise RuntimeError("shard_model: train.parallel=fsdp needs a process group of 2 or more processes")
    kwargs: dict = {"mp_policy": mixed_precision(precision)}
    if cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    for name in SHARDED_BLOCKS:
        for block in getattr(model, name, ()):
            fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def full_value(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's global value (a collective); a plain tensor as it is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


@contextlib.contextmanager
def no_gradient_sync(model: nn.Module):
    """Gradient accumulation: skip the reduce-scatter of this micro-batch (FSDP's counterpart of DDP no_sync)."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict on CPU, on rank 0 (other ranks get {}); every rank must call it."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


# ---------------------------------------------------------------------------------------------- checkpoints
def dcp_path(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step:08d}.dcp"


def is_complete(path: Path) -> bool:
    return path.is_dir() and (path / ".metadata").is_file() and (path / STATE_FILE).is_file()


def list_dcp_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete DCP checkpoints in ``output_dir``, newest (highest step) first."""
    return [p for p in list_checkpoints(output_dir, DCP_PATTERN) if is_complete(p)]


def _single() -> bool:
    """No process group: DCP reads / writes every shard in this process."""
    return not multi_process()


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def save_checkpoint(output_dir: str | os.PathLike, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict, keep_last: int) -> Path:
    """Every rank writes its shard; rank 0 writes ``state`` (plain values / tensors) and renames. Collective."""
    final = dcp_path(output_dir, step)
    tmp = final.with_name(f".{final.name}.tmp")
    if _is_main():
        shutil.rmtree(tmp, ignore_errors=True)  # a previous attempt's leftovers
        tmp.mkdir(parents=True)
    barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(tmp), no_dist=_single())
    barrier()  # every shard is on disk (dcp fsyncs its files)
    if _is_main():
        atomic_torch_save(state, tmp / STATE_FILE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        for old in list_dcp_checkpoints(output_dir)[keep_last:]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_state(path: str | os.PathLike) -> dict:
    """The non-tensor-shard part of a DCP checkpoint (``state.pt``, ``weights_only``)."""
    return read_artifact(Path(path) / STATE_FILE, "train.resume")


def load_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Model and optimizer from ``path`` (resharded to this world size), returns its ``state.pt``. Collective."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    box = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(box, checkpoint_id=str(path), no_dist=_single())
    set_state_dict(model, optimizer, model_state_dict=box["model"], optim_state_dict=box["optimizer"])
    return load_state(path)


def load_model(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """The model weights of a DCP checkpoint into ``model`` (sharded or not; one process needs no process group)."""
    model_sd = get_model_state_dict(model)
    box = {"model": model_sd}
    dcp.load(box, checkpoint_id=str(path), no_dist=_single())
    set_model_state_dict(model, box["model"])
    return model


def find_resume(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete DCP checkpoint whose ``state.pt`` loads; a damaged one is skipped with a warning."""
    found = first_loadable(list_dcp_checkpoints(output_dir), load_state)
    return None if found is None else found[0]
