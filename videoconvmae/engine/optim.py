"""Optimizer and per-iteration learning-rate schedule.

Recipes (MAE / ConvMAE / VideoMAE): AdamW (0.9, 0.95) with lr = base_lr * effective_batch / 256 (MAE / ConvMAE
keep ``min_lr`` / ``warmup_lr`` absolute; VideoMAE's run_mae_pretraining.py / run_class_finetuning.py scale them
by effective_batch / 256 too: ``optim.scale_lr_bounds``); no weight
decay on 1-D parameters (norms, biases), position embeddings and the model's ``no_weight_decay()`` names;
layer-wise lr decay through timm's ``param_groups_layer_decay`` driven by the model's ``group_matcher``;
LARS (timm) or SGD for linear probing. The schedule is timm's cosine with a linear warmup, stepped every
optimizer step (``t_in_epochs=False``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# isort: off
from videoconvmae import compat  # noqa: F401  (the torchvision shim must load before timm)
from timm.optim import Lars
from timm.optim._param_groups import param_groups_layer_decay, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
# isort: on
from torch import nn

from videoconvmae.engine.config import OptimConfig

# Parameters named like this never get weight decay even when the model does not list them.
ALWAYS_NO_DECAY = ("pos_embed", "*.pos_embed", "*pos_embed*", "mask_token", "cls_token")


@dataclass(frozen=True)
class LrPlan:
    """The derived numbers, computed once and logged at the start of a run."""

    effective_batch: int  # samples per optimizer step over all processes (batch * accum * world)
    lr: float  # peak learning rate actually used
    steps_per_epoch: int  # optimizer steps per epoch
    total_steps: int  # optimizer steps of the whole schedule
    warmup_steps: int  # linear warmup length in optimizer steps
    min_lr: float = 0.0  # floor of the cosine schedule actually used
    warmup_lr: float = 0.0  # lr at step 0 actually used


def plan_lr(cfg: OptimConfig, batch_size: int, world_size: int, steps_per_epoch: int) -> LrPlan:
    effective = batch_size * cfg.accum_steps * world_size
    lr = cfg.lr if cfg.lr is not None else cfg.base_lr * effective / 256
    bound_scale = effective / 256 if cfg.scale_lr_bounds else 1.0
    total = max(1, steps_per_epoch * cfg.epochs)
    warmup = min(total - 1, round(cfg.warmup_epochs * steps_per_epoch))
    return LrPlan(effective, lr, steps_per_epoch, total, max(0, warmup), cfg.min_lr * bound_scale,
                  cfg.warmup_lr * bound_scale)


def no_weight_decay_names(model: nn.Module) -> set[str]:
    names = set(ALWAYS_NO_DECAY)
    if hasattr(model, "no_weight_decay"):
        names |= set(model.no_weight_decay())
    return names


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Trainable parameters grouped by (layer scale, weight decay)."""
    skip = no_weight_decay_names(model)
    if cfg.layer_decay is not None and cfg.layer_decay != 1.0:
        if not hasattr(model, "group_matcher"):
            raise ValueError(f"optim.layer_decay={cfg.layer_decay}: the model has no group_matcher()")
        return param_groups_layer_decay(model, weight_decay=cfg.weight_decay, no_weight_decay_list=skip,
                                        layer_decay=cfg.layer_decay)
    return param_groups_weight_decay(model, weight_decay=cfg.weight_decay, no_weight_decay_list=skip)


def lars_param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """MAE's LARS: trust-ratio adaptation and weight decay only for matrices; biases / norms plain SGD."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay, "always_adapt": True},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "always_adapt": False},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    if cfg.name == "adamw":
        return torch.optim.AdamW(param_groups(model, cfg), lr=lr, betas=tuple(cfg.betas), eps=cfg.eps)
    if cfg.name == "sgd":
        return torch.optim.SGD(param_groups(model, cfg), lr=lr, momentum=cfg.momentum)
    if cfg.name == "lars":
        groups = [g for g in lars_param_groups(model, cfg) if g["params"]]
        return Lars(groups, lr=lr, momentum=cfg.momentum)
    raise ValueError(f"optim.name: expected adamw|sgd|lars, got {cfg.name!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, plan: LrPlan) -> CosineLRScheduler:
    """Linear warmup from ``plan.warmup_lr`` over ``warmup_steps``, then cosine to ``plan.min_lr``.

    Group lr = schedule value * the group's ``lr_scale`` (layer decay); the lr at step t is set by
    ``scheduler.step_update(t)`` before optimizer step t.
    """
    sched = CosineLRScheduler(optimizer, t_initial=plan.total_steps - plan.warmup_steps, lr_min=plan.min_lr,
                              warmup_t=plan.warmup_steps, warmup_lr_init=plan.warmup_lr, warmup_prefix=True,
                              t_in_epochs=False)
    sched.step_update(0)
    return sched


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The largest group lr (the top layer's under layer decay)."""
    return max(g["lr"] for g in optimizer.param_groups)
