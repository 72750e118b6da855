"""The optimisation and training-loop sections of a run config (``optim.*``, ``train.*``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd | lars
    base_lr: float = 1.5e-4  # lr per 256 videos/images; actual lr = base_lr * effective_batch / 256
    lr: float | None = None  # absolute lr; overrides base_lr scaling when set
    min_lr: float = 0.0  # floor of the cosine schedule
    warmup_lr: float = 0.0  # lr at step 0; the warmup rises linearly from it
    scale_lr_bounds: bool = False  # min_lr / warmup_lr are per 256 samples, scaled like base_lr (VideoMAE)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # AdamW betas
    eps: float = 1e-8  # AdamW epsilon
    momentum: float = 0.9  # SGD / LARS momentum
    weight_decay: float = 0.05  # not applied to norms, biases, position embeddings, model.no_weight_decay()
    layer_decay: float | None = None  # layer-wise lr decay (finetuning); stages 1-2 at the lowest layer
    warmup_epochs: float = 40.0  # linear warmup length, in epochs (per-iteration schedule)
    epochs: int = 800  # schedule length, in epochs
    clip_grad: float | None = None  # max gradient norm; None = no clipping
    accum_steps: int = 1  # micro-batches per optimizer step

    def __post_init__(self) -> None:
        if self.name not in ("adamw", "sgd", "lars"):
            raise ValueError(f"optim.name: expected adamw|sgd|lars, got {self.name!r}")
        if self.accum_steps < 1:
            raise ValueError(f"optim.accum_steps: expected >= 1, got {self.accum_steps}")
        if self.epochs < 1:
            raise ValueError(f"optim.epochs: expected >= 1, got {self.epochs}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas: expected two values in [0, 1), got {list(self.betas)}")


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"  # checkpoints, resolved config, logs
    seed: int = 0  # seeds python, numpy, torch, sampler and mask generators (offset by rank)
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + grad scaler, GPU only)
    compile: bool = False  # torch.compile the model
    max_steps: int | None = None  # stop after this many optimizer steps (debugging / tests)
    ckpt_every_steps: int = 1000  # write a checkpoint every N optimizer steps (and at the end)
    keep_last: int = 2  # checkpoints kept on disk
    resume: str = "auto"  # auto (newest valid checkpoint in output_dir) | none | path to a checkpoint
    resume_changes: str = "refuse"  # refuse | apply: recipe keys that differ from the checkpoint's config
    overwrite: bool = False  # train.resume=none into a folder holding another run: remove that run's files
    log_every_steps: int = 20  # JSONL / TensorBoard scalars every N steps
    eval_every_epochs: int = 1  # finetune / linprobe: validation every N epochs (and after the last)
    max_nonfinite_steps: int = 20  # stop after this many consecutive non-finite losses
    ema: bool = False  # keep an exponential moving average of the weights (finetuning)
    ema_decay: float = 0.9999  # EMA decay per step
    dist_backend: str = "auto"  # auto (nccl on GPU, gloo on CPU) | gloo | nccl
    find_unused_parameters: bool = False  # DDP: allow parameters that get no gradient in a step
    parallel: str = "ddp"  # ddp (replicated weights) | fsdp (FSDP2: sharded weights, checkpoint-<step>.dcp folders)
    fsdp_cpu_offload: bool = False  # fsdp: keep sharded parameters / gradients / optimizer state in CPU memory
    progress: bool = True  # tqdm progress line on rank 0
    tensorboard: bool = True  # write TensorBoard scalars to <output_dir>/tb on rank 0

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"train.precision: expected fp32|bf16|fp16, got {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"train.device: expected auto|cpu|cuda, got {self.device!r}")
        if self.dist_backend not in ("auto", "gloo", "nccl"):
            raise ValueError(f"train.dist_backend: expected auto|gloo|nccl, got {self.dist_backend!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"train.max_steps: expected >= 1 or null (= the whole schedule), got {self.max_steps}")
        if self.resume_changes not in ("refuse", "apply"):
            raise ValueError(f"train.resume_changes: expected refuse|apply, got {self.resume_changes!r}")
        if self.parallel not in ("ddp", "fsdp"):
            raise ValueError(f"train.parallel: expected ddp|fsdp, got {self.parallel!r}")
        if self.fsdp_cpu_offload and self.parallel != "fsdp":
            raise ValueError("train.fsdp_cpu_offload: only with train.parallel=fsdp")
        if self.ckpt_every_steps < 1 or self.keep_last < 1:
            raise ValueError("train.ckpt_every_steps and train.keep_last: expected >= 1")
