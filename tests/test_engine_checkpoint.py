"""Checkpoint atomicity, RNG state round trip, distributed env parsing, resumable sampler, optimizer groups."""

import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from videoconvmae.engine import checkpoint as ckpt_io
from videoconvmae.engine.config import OptimConfig
from videoconvmae.engine.distributed import read_env
from videoconvmae.engine.optim import build_optimizer, build_scheduler, plan_lr
from videoconvmae.engine.sampler import ResumableSampler


def fake_checkpoint(step: int) -> dict:
    return {"model": {"w": torch.full((4,), float(step))}, "optimizer": {}, "step": step, "epoch": 0,
            "epoch_position": 0, "rng": ckpt_io.rng_state(), "config": {}, "code_version": "test"}


def test_failure_between_temp_write_and_rename_keeps_previous(tmp_path, monkeypatch):
    ckpt_io.atomic_torch_save(fake_checkpoint(1), ckpt_io.checkpoint_path(tmp_path, 1))

    def broken_replace(src, dst):
        raise OSError("disk vanished")

    monkeypatch.setattr(ckpt_io.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk vanished"):
        ckpt_io.atomic_torch_save(fake_checkpoint(2), ckpt_io.checkpoint_path(tmp_path, 2))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-00000001.pt"]  # no temp file left
    path, ckpt = ckpt_io.find_resume(tmp_path)
    assert ckpt["step"] == 1 and torch.equal(ckpt["model"]["w"], torch.ones(4))


KILLED_WRITER = """
import sys, time, torch
from videoconvmae.engine import checkpoint as ckpt_io
big = {"model": {"w": torch.zeros(4_000_000)}, "optimizer": {}, "step": 2, "epoch": 0, "epoch_position": 0,
       "rng": {}, "config": {}, "code_version": "x"}
def slow_write(f):
    f.write(b"PK" * 1000)
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
ckpt_io.atomic_write(ckpt_io.checkpoint_path(sys.argv[1], 2), slow_write)
"""


def test_process_killed_mid_write_leaves_previous_loadable(tmp_path):
    ckpt_io.atomic_torch_save(fake_checkpoint(1), ckpt_io.checkpoint_path(tmp_path, 1))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not ckpt_io.checkpoint_path(tmp_path, 2).exists()  # never visible under its final name
    assert any(p.name.startswith(".checkpoint-00000002.pt.tmp") for p in tmp_path.iterdir())
    path, ckpt = ckpt_io.find_resume(tmp_path)
    assert path.name == "checkpoint-00000001.pt" and ckpt["step"] == 1


def test_rng_state_round_trip_through_weights_only_load(tmp_path):
    gen = torch.Generator().manual_seed(5)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    ckpt_io.atomic_torch_save({"rng": ckpt_io.rng_state({"mask": gen})}, tmp_path / "r.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=gen))
    random.seed(9), np.random.seed(9), torch.manual_seed(9), gen.manual_seed(9)
    state = torch.load(tmp_path / "r.pt", weights_only=True)["rng"]
    ckpt_io.set_rng_state(state, {"mask": gen})
    assert (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=gen)) == expected


def test_load_checkpoint_rejects_a_non_checkpoint(tmp_path):
    torch.save({"model": {}}, tmp_path / "checkpoint-00000003.pt")
    with pytest.raises(ValueError, match="not a training checkpoint"):
        ckpt_io.load_checkpoint(tmp_path / "checkpoint-00000003.pt")


def test_env_reading_takes_torch_variables_only():
    slurm = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[12-13]"}
    assert read_env(slurm)["world_size"] == 1  # the launch layer translates Slurm's (tests/test_launch_config.py)
    torch_vars = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "1234"}
    assert read_env(torch_vars) == {"rank": 0, "world_size": 2, "local_rank": 0, "master_addr": "h",
                                    "master_port": 1234}
    assert read_env({})["world_size"] == 1


def test_sampler_ranks_partition_and_resume_continues_exactly():
    n, world = 50, 2
    ranks = [ResumableSampler(n, r, world, seed=7) for r in range(world)]
    for s in ranks:
        s.set_epoch(3)
    parts = [list(s) for s in ranks]
    assert len(parts[0]) == len(parts[1]) == 25 and not set(parts[0]) & set(parts[1])
    one = ResumableSampler(n, 0, 1, seed=7)
    one.set_epoch(3)
    assert sorted(list(one)[:10]) == sorted(parts[0][:5] + parts[1][:5])  # global batches match one process
    resumed = ResumableSampler(n, 1, world, seed=7)
    resumed.load_state_dict({"epoch": 3, "position": 10})
    assert list(resumed) == parts[1][10:] and len(resumed) == 15
    other = ResumableSampler(n, 0, world, seed=7)
    other.set_epoch(4)
    assert list(other) != parts[0]


def test_optimizer_groups_lr_scaling_and_schedule():
    from videoconvmae.models import create_model

    model = create_model("convmae_tiny_cls", num_classes=5)
    cfg = OptimConfig(layer_decay=0.5, epochs=10, warmup_epochs=2, base_lr=1e-3)
    plan = plan_lr(cfg, batch_size=32, world_size=4, steps_per_epoch=10)
    assert plan.effective_batch == 128 and plan.lr == pytest.approx(5e-4) and plan.warmup_steps == 20
    opt = build_optimizer(model, cfg, plan.lr)
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    decay = {names[id(p)]: g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    n3 = len(model.blocks3)
    assert scale["head.weight"] == 1.0 and scale["blocks3.0.attn.qkv.weight"] == 0.5 ** n3
    assert scale["patch_embed1.proj.weight"] == 0.5 ** (n3 + 1)  # stages 1-2 and embeds: the lowest layer
    assert all(v == 0.5 ** (n3 + 1) for k, v in scale.items() if k.startswith(("blocks1.", "blocks2.")))
    assert decay["head.bias"] == 0.0 and decay["head.weight"] == 0.05
    assert all(decay[k] == 0.0 for k in decay if "norm" in k or "pos_embed" in k)
    sched = build_scheduler(opt, cfg, plan)
    head_group = next(g for g in opt.param_groups if g["lr_scale"] == 1.0)
    lrs = []
    for t in range(100):
        sched.step_update(t)
        lrs.append(head_group["lr"])
    assert lrs[0] == 0.0 and lrs[10] == pytest.approx(plan.lr / 2) and lrs[20] == pytest.approx(plan.lr)
    assert all(a >= b for a, b in zip(lrs[20:], lrs[21:])) and lrs[-1] < 0.01 * plan.lr


def test_lars_adapts_only_matrices():
    head = torch.nn.Sequential(torch.nn.BatchNorm1d(8, affine=False), torch.nn.Linear(8, 3))
    opt = build_optimizer(head, OptimConfig(name="lars", weight_decay=0.0), lr=0.1)
    by_ndim = {p.ndim: g for g in opt.param_groups for p in g["params"]}
    assert by_ndim[2]["always_adapt"] and not by_ndim[1]["always_adapt"]
