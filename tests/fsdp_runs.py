"""The runs the FSDP tests compare, made in ONE pair of gloo processes (one start-up for all of them).

``run_all(rank, world, port, root, synth_root)`` trains, each in its own folder under ``root``: a tiny video
pretrain under DDP and under FSDP, the FSDP pretrain stopped at a step boundary (stop_event, as preemption does)
and resumed, and a tiny finetune under DDP and under FSDP. Importable by spawned processes.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

PRETRAIN_STEPS = 6  # 15 clips, 2 ranks x batch 2: 3 steps per epoch
STOP_AFTER = 4  # mid-epoch: the resume continues inside epoch 1
FINETUNE_STEPS = 3


class StopAfter(threading.Event):
    """A stop_event that turns set on its ``n``-th poll: the loop polls it once per optimizer step."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.polls = n, 0

    def is_set(self) -> bool:
        self.polls += 1
        return self.polls >= self.n


def tiny(synth_root: Path, out: Path, *extra: str) -> list[str]:
    k400 = Path(synth_root) / "k400"
    return [f"data.root={k400}", f"data.train_annotation={k400}/train.csv", "data.val_annotation=",
            "data.input_size=32", "data.short_side_size=32", "data.num_frames=4", "data.batch_size=2",
            "data.num_workers=0", "train.progress=false", "train.tensorboard=false", "train.log_every_steps=1",
            "optim.epochs=10", f"train.output_dir={out}", *extra]


def run_all(rank: int, world: int, port: int, root: str, synth_root: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import torch

    torch.set_num_threads(1)
    from videoconvmae.config import load_config
    from videoconvmae.engine.distributed import cleanup_distributed, init_distributed
    from videoconvmae.engine.tasks import run_task

    init_distributed("gloo", "cpu")  # one group for all the runs: run_task then leaves it up between them

    def run(task: str, preset: str, name: str, *extra: str, stop_event=None) -> dict:
        cfg = load_config(preset, tiny(Path(synth_root), Path(root) / name, *extra), task=task)
        return run_task(cfg, stop_event=stop_event)

    pre = (f"train.max_steps={PRETRAIN_STEPS}", "train.ckpt_every_steps=1000")
    try:
        run("pretrain", "pretrain_k400_tiny", "pre_ddp", *pre, "train.parallel=ddp")
        run("pretrain", "pretrain_k400_tiny", "pre_fsdp", *pre, "train.parallel=fsdp")
        stopped = run("pretrain", "pretrain_k400_tiny", "pre_fsdp_cut", *pre, "train.parallel=fsdp",
                      stop_event=StopAfter(STOP_AFTER))
        assert stopped["status"] == "stopped" and stopped["step"] == STOP_AFTER, stopped
        run("pretrain", "pretrain_k400_tiny", "pre_fsdp_cut", *pre, "train.parallel=fsdp")
        fine = (f"train.max_steps={FINETUNE_STEPS}", "model.pretrained=", "train.ckpt_every_steps=1000")
        run("finetune", "finetune_k400_tiny", "fine_ddp", *fine, "train.parallel=ddp")
        run("finetune", "finetune_k400_tiny", "fine_fsdp", *fine, "train.parallel=fsdp")
    finally:
        cleanup_distributed()
