"""Mixup / CutMix with label smoothing (timm ``Mixup``) for image [B, C, H, W] and video [B, C, T, H, W] batches.

A video batch is viewed as [B, C*T, H, W] for timm: CutMix then cuts the SAME box out of every frame and mixup
blends whole clips, then the view is undone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from videoconvmae import compat  # noqa: F401  (before timm, imported lazily below)
from videoconvmae.data.config import DataConfig


def build_mixup(cfg: DataConfig, num_classes: int) -> Callable[[torch.Tensor, torch.Tensor],
                                                              tuple[torch.Tensor, torch.Tensor]] | None:
    """``fn(x, y) -> (mixed x, soft targets [B, num_classes])``; None when mixup and cutmix are both off.

    timm mixes a batch with its reverse, so the batch size must be even.
    """
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    from timm.data import Mixup

    mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                  num_classes=num_classes)

    def apply(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[0] % 2:
            raise ValueError(f"mixup / cutmix need an even batch, got {x.shape[0]} (set data.batch_size even)")
        if x.ndim == 5:
            b, c, t, h, w = x.shape
            flat, soft = mixup(x.reshape(b, c * t, h, w), y)
            return flat.reshape(b, c, t, h, w), soft
        return mixup(x, y)

    return apply
