"""A toy masked autoencoder and dataset for the engine tests (importable by spawned processes)."""

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from videoconvmae.config import load_config
from videoconvmae.engine.distributed import DistInfo
from videoconvmae.engine.tasks import pretrain_loss
from videoconvmae.engine.trainer import TaskParts, Trainer


class ToyMAE(nn.Module):
    """Reconstructs masked entries of a vector; the mask comes from the passed generator, dropout from the
    global RNG, so both RNG paths of a real run are exercised. ``nan_at`` makes chosen calls return NaN."""

    def __init__(self, dim: int = 16, hidden: int = 32, random: bool = True) -> None:
        super().__init__()
        self.random = random  # False: no dropout, everything masked (processes must match exactly)
        self.enc = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.1 if random else 0.0),
                                 nn.LayerNorm(hidden))
        self.dec = nn.Linear(hidden, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, dim))
        self.calls = 0
        self.nan_at: set[int] = set()

    def no_weight_decay(self):
        return {"pos_embed"}

    def forward(self, x, mask=None, generator=None, mask_seeds=None):
        self.calls += 1
        if mask is None and not self.random:
            mask = torch.ones_like(x, dtype=torch.bool)
        if mask is None and mask_seeds is not None:  # the real model's per-row masks (masking.sample_masks)
            mask = torch.stack([torch.rand(x.shape[1:], generator=torch.Generator().manual_seed(int(s))) < 0.5
                                for s in mask_seeds.tolist()]).to(x.device)
        if mask is None:
            mask = torch.rand(x.shape, generator=generator, device=x.device) < 0.5
        pred = self.dec(self.enc(x.masked_fill(mask, 0.0) + self.pos_embed))
        loss = ((pred - x) ** 2 * mask).sum() / mask.sum().clamp_min(1)
        if self.calls in self.nan_at:
            loss = loss * float("nan")
        return {"loss": loss, "pred": pred, "mask": mask}


class ToyData(Dataset):
    """Vectors on a low-dimensional subspace plus per-item random noise drawn from the global torch RNG
    (the augmentation stand-in)."""

    def __init__(self, n: int = 64, dim: int = 16) -> None:
        g = torch.Generator().manual_seed(123)
        basis = torch.randn(3, dim, generator=g)
        self.x = torch.randn(n, 3, generator=g) @ basis

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input": self.x[i] + 0.01 * torch.randn(self.x.shape[1]), "label": torch.tensor(0),
                "index": torch.tensor(i)}


def toy_config(out_dir, *overrides):
    return load_config(None, [f"train.output_dir={out_dir}", "task=pretrain", "data.batch_size=8",
                              "data.num_workers=0", "optim.epochs=3", "optim.warmup_epochs=1", "optim.lr=0.01",
                              "train.progress=false", "train.tensorboard=false", "train.log_every_steps=1",
                              "train.ckpt_every_steps=100", *overrides])


def toy_parts(cfg, rank: int = 0, n: int = 64, random: bool = True):
    torch.manual_seed(cfg.train.seed)
    model = ToyMAE(random=random)
    torch.manual_seed(cfg.train.seed + rank)
    gen = torch.Generator().manual_seed(cfg.train.seed * 1000 + rank)
    return TaskParts(model=model, train_set=ToyData(n), loss_fn=pretrain_loss(gen), generators={"mask": gen})


def train(cfg, stop_event=None, parts=None):
    """(result, trainer) of one single-process toy run."""
    parts = parts or toy_parts(cfg)
    trainer = Trainer(cfg, parts, DistInfo())
    return trainer.fit(stop_event), trainer


def read_metrics(out_dir):
    import json

    return [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


def hold_run(out_dir: str) -> None:
    """A real toy run that announces its first step on stdout and then hangs inside it (lock tests)."""
    import sys
    import time

    cfg = toy_config(out_dir)
    parts = toy_parts(cfg)
    inner = parts.loss_fn

    def loss_fn(model, batch):
        print("holding", flush=True)
        time.sleep(300)
        return inner(model, batch)

    parts.loss_fn = loss_fn
    sys.stdout.flush()
    train(cfg, parts=parts)


def ddp_worker(rank: int, world: int, port: int, out_dir: str, batch: int) -> None:
    """One process of the 2-process test: torchrun-style env vars, init_distributed, the real Trainer."""
    import os

    from videoconvmae.engine.distributed import cleanup_distributed, init_distributed
    from videoconvmae.engine.trainer import Trainer

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    info = init_distributed("auto", "cpu")
    assert info.world_size == world and info.rank == rank
    cfg = toy_config(out_dir, f"data.batch_size={batch}", "optim.epochs=2", "train.resume=none")
    try:
        result = Trainer(cfg, toy_parts(cfg, rank, random=False), info).fit()
        if rank == 0:
            torch.save(result, os.path.join(out_dir, "result.pt"))
    finally:
        cleanup_distributed()
