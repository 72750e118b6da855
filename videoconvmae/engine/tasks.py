"""The three training tasks on top of the generic loop: what model, loss, data and evaluation each uses.

``run_task(cfg, stop_event)`` is the entry point of ``videoconvmae pretrain|finetune|linprobe`` and of the
launch layer. When ``stop_event`` is set (preemption), the loop writes a checkpoint at the next step boundary
and returns ``status="stopped"``; a later run with ``train.resume=auto`` continues exactly there.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from videoconvmae import compat  # noqa: F401  (before timm, imported lazily below)
from videoconvmae.config import Config
from videoconvmae.data.config import DataConfig
from videoconvmae.data.seeding import isolated_rng, seed_everything
from videoconvmae.engine.distributed import DistInfo, all_reduce_sum, cleanup_distributed, init_distributed
from videoconvmae.engine.trainer import (
    LossFn,
    TaskParts,
    Trainer,
    autocast_for,
    check_precision,
)
from videoconvmae.errors import ConfigError
from videoconvmae.models.config import ModelConfig
from videoconvmae.task import Task


# ---------------------------------------------------------------------------------------------- losses
def pretrain_loss(generator: torch.Generator | None = None) -> LossFn:
    """The pretrain model returns its own loss. Each row's mask comes from its ``sample_seed`` (the trainer's
    ``SeededItems.row_seeds``: the same masks with any number of processes); without one, from ``generator``."""

    def loss_fn(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        if "sample_seed" in batch:
            return model(batch["input"], mask_seeds=batch["sample_seed"])["loss"], {}
        return model(batch["input"], generator=generator)["loss"], {}

    return loss_fn


def classification_loss(mixup: Any, label_smoothing: float) -> LossFn:
    """Mixup / CutMix -> soft targets -> SoftTargetCrossEntropy; otherwise (smoothed) cross entropy."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup is not None:
        criterion: nn.Module = SoftTargetCrossEntropy()
    elif label_smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(label_smoothing)
    else:
        criterion = nn.CrossEntropyLoss()

    def loss_fn(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        x, y = batch["input"], batch["label"]
        if mixup is not None:
            x, y = mixup(x, y)
        logits = model(x)
        return criterion(logits.float(), y), {}

    return loss_fn


# ---------------------------------------------------------------------------------------------- models
def make_linear_probe(model: nn.Module) -> nn.Module:
    """MAE's linear probe: frozen encoder, head = BatchNorm1d(affine=False) + Linear (weights std 0.01).

    The classifier keeps its key layout; the head becomes ``head.0`` (BN statistics) and ``head.1`` (Linear).
    """
    linear = model.head
    if not isinstance(linear, nn.Linear):
        raise ValueError("linear probe: the classifier's head is not an nn.Linear")
    nn.init.trunc_normal_(linear.weight, std=0.01)
    nn.init.zeros_(linear.bias)
    model.head = nn.Sequential(nn.BatchNorm1d(linear.in_features, affine=False, eps=1e-6), linear)
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("head.")
    return model


def linear_probe_train_mode(model: nn.Module) -> None:
    """Encoder in eval mode (frozen: no drop path, no statistics updates), the head trains."""
    model.eval()
    model.head.train()


@torch.no_grad()
def fold_linear_probe(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with the probe's BatchNorm(affine=False) folded into its Linear: a plain classifier layout.

    In eval mode the head computes W (f - mean) / sqrt(var + eps) + b = W' f + b' with W' = W / sqrt(var + eps)
    and b' = b - W' mean, so the exported weights.pt loads into the ordinary ``{arch}_cls`` model (eval layer)
    and gives the same logits. Training checkpoints keep ``head.0`` / ``head.1`` for resuming.
    """
    bn, linear = model.head[0], model.head[1]
    scale = (bn.running_var + bn.eps).rsqrt()
    weight = linear.weight * scale[None, :]
    bias = linear.bias - weight @ bn.running_mean
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    state.update({"head.weight": weight, "head.bias": bias})
    return state


def check_modality(data_cfg: DataConfig, model_cfg: ModelConfig) -> None:
    """The data's modality (images for ``imagefolder``, else clips) is the model family's (``spatial_dims``)."""
    from videoconvmae.models.registry import FAMILIES

    family = FAMILIES.get(model_cfg.arch)
    images = data_cfg.dataset == "imagefolder"
    if family is not None and images != (family.spatial_dims == 2):  # an unknown arch: build_model says so
        raise ConfigError(f"data.dataset={data_cfg.dataset!r} gives {'images' if images else 'video clips'} but "
                          f"model.arch={model_cfg.arch!r} is {'a video' if images else 'an image'} model "
                          f"(spatial_dims={family.spatial_dims}): use a {'convmae' if images else 'videoconvmae'}_* "
                          "arch or a dataset of that modality")


def build_task_model(cfg: Config, num_classes: int = 0) -> nn.Module:
    """The module a task trains (eval loads any checkpoint with ``checkpoint.load_task_model``)."""
    from videoconvmae.data.sampling import model_input_shape
    from videoconvmae.models import build_model

    check_modality(cfg.data, cfg.model)

    mode = "pretrain" if cfg.task == "pretrain" else "finetune"
    try:
        model = build_model(cfg.model, mode, num_classes, input_shape=model_input_shape(cfg.data, cfg.task),
                            input_norm=(cfg.data.mean, cfg.data.std))
    except ValueError as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    if cfg.task == "linprobe":
        model = make_linear_probe(model)
    return model


def check_labels(dataset: Dataset, num_classes: int) -> None:
    """Every label is an output of the head (else: a raw IndexError in the loss, mid-run)."""
    records = getattr(dataset, "records", None) or []
    worst = max(records, key=lambda r: r.label, default=None)
    if worst is not None and not 0 <= worst.label < num_classes:
        raise ConfigError(f"{getattr(dataset, 'annotation', 'dataset')}: label {worst.label} ({worst.path}) is not "
                          f"one of the model's {num_classes} classes (the train annotation's; model.num_classes)")


# ---------------------------------------------------------------------------------------------- evaluation
def make_evaluator(cfg: Config, info: DistInfo, val_set: Dataset, collate_fn) -> Any:
    """Single-view top-1 / top-5 on the val split; every rank takes a disjoint interleaved share, counts summed."""

    def evaluate(model: nn.Module) -> dict:
        was_training = model.training
        model.eval()
        share = torch.utils.data.Subset(val_set, range(info.rank, len(val_set), info.world_size))
        loader = DataLoader(share, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers,
                            collate_fn=collate_fn)
        sums = torch.zeros(4, dtype=torch.float64, device=info.device)  # top-1 correct, count, loss sum, top-5
        # The training RNG streams must not depend on whether / how often evaluation ran.
        with isolated_rng(cfg.train.seed), torch.no_grad():
            for batch in loader:
                x, y = batch["input"].to(info.device), batch["label"].to(info.device)
                with autocast_for(cfg.train.precision, info.device):
                    logits = model(x).float()
                top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
                sums[0] += (top5[:, 0] == y).sum()
                sums[1] += len(y)
                sums[2] += nn.functional.cross_entropy(logits, y, reduction="sum")
                sums[3] += (top5 == y[:, None]).any(-1).sum()
        all_reduce_sum(sums)
        model.train(was_training)
        n = max(float(sums[1]), 1.0)
        return {"val_acc1": 100.0 * float(sums[0]) / n, "val_acc5": 100.0 * float(sums[3]) / n,
                "val_loss": float(sums[2]) / n, "val_count": int(sums[1])}

    return evaluate


# ---------------------------------------------------------------------------------------------- assembly
def build_parts(cfg: Config, info: DistInfo) -> TaskParts:
    from videoconvmae import data as data_layer

    mode = cfg.task
    seed_everything(cfg.train.seed)  # the same initial weights on every rank
    train_set = data_layer.build_dataset(cfg.data, "train", mode)
    num_classes = 0 if cfg.task == "pretrain" else (cfg.model.num_classes or train_set.num_classes)
    model = build_task_model(cfg, num_classes).to(info.device)
    seed_everything(cfg.train.seed + info.rank)
    parts = TaskParts(model=model, train_set=train_set, loss_fn=None, collate_fn=data_layer.collate,  # type: ignore
                      skip_stats=data_layer.SkipStats())
    if cfg.task == "pretrain":
        parts.loss_fn = pretrain_loss()  # masks from the rows' sample seeds: world-size independent
        parts.find_unused_parameters = not cfg.model.multiscale_decoder  # the stage fusion convs sit idle
        return parts
    mixup = data_layer.build_mixup(cfg.data, num_classes) if cfg.task == "finetune" else None
    parts.loss_fn = classification_loss(mixup, cfg.data.label_smoothing if cfg.task == "finetune" else 0.0)
    if cfg.task == "linprobe":
        parts.train_mode = linear_probe_train_mode
        parts.export_state = fold_linear_probe
    if cfg.train.ema:
        from timm.utils import ModelEmaV3

        parts.ema = ModelEmaV3(model, decay=cfg.train.ema_decay)
    check_labels(train_set, num_classes)
    if cfg.data.val_annotation:
        val_set = data_layer.build_dataset(cfg.data, "val", mode)
        check_labels(val_set, num_classes)
        parts.evaluate = make_evaluator(cfg, info, val_set, data_layer.collate)
    return parts


def run_task(cfg: Config, stop_event: threading.Event | None = None) -> dict:
    """Train ``cfg.task``; returns ``{"status": "completed" | "stopped", "step", "checkpoint", ...metrics}``."""
    if not Task.parse(cfg.task).trains:
        raise ConfigError(f"task: run_task trains; {cfg.task!r} is `videoconvmae eval`")
    was_initialised = torch.distributed.is_initialized()
    info = init_distributed(cfg.train.dist_backend, cfg.train.device)
    try:
        check_precision(cfg.train.precision, info.device)
        parts = build_parts(cfg, info)
        return Trainer(cfg, parts, info).fit(stop_event)
    finally:
        if not was_initialised:
            cleanup_distributed()  # the group this call joined (torchrun) ends with it
