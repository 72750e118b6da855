"""The optimisation and training-loop sections of a run config (``optim.*``, ``train.*``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd | lars
    base_lr: float = 1.5e-4  # lr per 256 samples; actual lr = base_lr * effective_batch / 256
    lr: float | None = None  # absolute lr; overrides base_lr scaling when set
    min_lr: float = 0.0  # floor of the cosine schedule
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # AdamW betas
    momentum: float = 0.9  # SGD / LARS momentum
    weight_decay: float = 0.05  # not applied to norms, biases, position embeddings
    layer_decay: float | None = None  # layer-wise lr decay (finetuning); stages 1-2 at the lowest layer
    warmup_epochs: float = 40.0  # linear warmup length, in epochs
    epochs: int = 800  # schedule length, in epochs
    clip_grad: float | None = None  # max gradient norm; None = no clipping
    accum_steps: int = 1  # micro-batches per optimizer step


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
    log_every_steps: int = 20  # JSONL / TensorBoard scalars every N steps
    eval_every_epochs: int = 1  # finetune / linprobe: validation every N epochs
    max_nonfinite_steps: int = 20  # stop after this many consecutive non-finite losses
    ema: bool = False  # keep an exponential moving average of the weights (finetuning)
    ema_decay: float = 0.9999  # EMA decay per step
    dist_backend: str = "auto"  # auto (nccl on GPU, gloo on CPU) | gloo | nccl
    progress: bool = True  # tqdm progress line on rank 0
