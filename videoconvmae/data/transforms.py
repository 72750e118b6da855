"""Clip augmentation, identical for every frame of a clip: uint8 [T, H, W, 3] -> float [C, T, S, S].

An image is a clip with T = 1 (the dataset squeezes T away), so 2D and 3D share every step.

Training pipelines (VideoMAE / MAE recipes):
- pretrain: multi-scale crop (VideoMAE ``GroupMultiScaleCrop``: scales 1, .875, .75, .66 of the short side,
  aspect distortion <= 1 step, 13 fixed positions) or random resized crop (``pretrain_rrc_scale``), optional
  flip, normalise. VideoMAE pretrains video with the multi-scale crop and NO flip (datasets.py
  ``DataAugmentationForVideoMAE``: crop, stack, normalise); MAE / ConvMAE pretrain images with
  RandomResizedCrop(0.2-1) and a flip (main_pretrain.py);
- finetune: timm RandAugment on the full frames (replayed so every frame gets the SAME ops and magnitudes, as
  VideoMAE's list-aware RandAugment does), random resized crop, optional flip, normalise, timm RandomErasing
  with one box for the whole clip;
- linprobe: random resized crop, optional flip, normalise.
Evaluation: short side resized to ``short_side_size``, centre crop ``input_size``, normalise.

The geometric steps are our own few lines on tensors (crop = a numpy slice, one ``interpolate`` for the whole
clip) because timm's / pytorchvideo's versions work per PIL image or re-derive parameters per call, while a
clip needs one set of parameters for all its frames; crop parameters follow timm's RandomResizedCrop and
VideoMAE's GroupMultiScaleCrop exactly. Randomness comes from Python's ``random`` (and numpy's global state
for RandAugment), which PyTorch seeds differently in every DataLoader worker.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from videoconvmae import compat  # noqa: F401  (before timm, imported lazily below)
from videoconvmae.data.config import DataConfig
from videoconvmae.errors import ConfigError

MULTISCALE_SCALES = (1.0, 0.875, 0.75, 0.66)


def multiscale_crop_box(h: int, w: int, size: int, rng: random.Random, scales: tuple[float, ...] = MULTISCALE_SCALES,
                        max_distort: int = 1) -> tuple[int, int, int, int]:
    """(top, left, crop_h, crop_w) as VideoMAE's GroupMultiScaleCrop(size, scales) with fix_crop / more_fix_crop."""
    base = min(h, w)
    sizes = [int(base * s) for s in scales]
    crop_h = [size if abs(s - size) < 3 else s for s in sizes]  # VideoMAE snaps sizes within 3 px of the output
    crop_w = [size if abs(s - size) < 3 else s for s in sizes]
    pairs = [(ch, cw) for i, ch in enumerate(crop_h) for j, cw in enumerate(crop_w) if abs(i - j) <= max_distort]
    ch, cw = rng.choice(pairs)
    ch, cw = min(ch, h), min(cw, w)
    hs, ws = (h - ch) // 4, (w - cw) // 4
    steps = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2),  # corners + centre, then the "more fix crop" positions
             (2, 0), (2, 4), (4, 2), (0, 2), (1, 1), (1, 3), (3, 1), (3, 3)]
    sy, sx = rng.choice(steps)
    return sy * hs, sx * ws, ch, cw


def rrc_box(h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float],
            rng: random.Random) -> tuple[int, int, int, int]:
    """(top, left, crop_h, crop_w) as timm / torchvision RandomResizedCrop.get_params (10 tries, then centre)."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return rng.randint(0, h - ch), rng.randint(0, w - cw), ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def resize_short_side_box(h: int, w: int, short_side: int, size: int) -> tuple[int, int, int, int]:
    """The centre crop of the original frame that 'resize short side to short_side, crop size x size' keeps."""
    scale = short_side / min(h, w)
    ch, cw = min(h, round(size / scale)), min(w, round(size / scale))
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def crop_resize(frames: np.ndarray, box: tuple[int, int, int, int], size: int,
                mode: str = "bilinear") -> torch.Tensor:
    """uint8 [T, H, W, 3] -> uint8 [T, 3, size, size] (channels-last memory): crop, one resize per clip.

    Resizing in uint8 is PyTorch's SIMD path for channels-last images (~5x faster than float here) and rounds
    like PIL / OpenCV, which VideoMAE resizes with; antialiasing when shrinking, as PIL does. ``mode`` bilinear
    (VideoMAE: PIL BILINEAR in GroupMultiScaleCrop / Resize) or bicubic (MAE / ConvMAE: RandomResizedCrop and
    the eval Resize with PIL BICUBIC).
    """
    top, left, ch, cw = box
    x = torch.from_numpy(np.ascontiguousarray(frames[:, top:top + ch, left:left + cw])).permute(0, 3, 1, 2)
    if (ch, cw) != (size, size):
        x = F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=max(ch, cw) > size)
    return x


def normalization(mean: Sequence[float], std: Sequence[float], ndim: int,
                  device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), float32 [3, 1, ...] of ``ndim`` dims: normalised = uint8 * scale + shift, which is
    ``(x / 255 - mean) / std`` in ONE fused pass (``addcmul`` promotes the uint8 operand)."""
    shape = (3,) + (1,) * (ndim - 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(shape)
    return 1.0 / (255.0 * std_t), -torch.tensor(mean, dtype=torch.float32, device=device).view(shape) / std_t


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``[N, 3, ...]`` -> float32 ``(x / 255 - mean) / std`` per channel (dimension 1)."""
    scale, shift = normalization(mean, std, x.dim() - 1, x.device)
    return torch.addcmul(shift, x, scale)


def resize_mode(cfg: DataConfig) -> str:
    """``data.interpolation``, or the upstream's: bicubic for images (MAE / ConvMAE), bilinear for video."""
    mode = cfg.interpolation or ("bicubic" if cfg.dataset == "imagefolder" else "bilinear")
    if mode not in ("bilinear", "bicubic"):
        raise ConfigError(f"data.interpolation: expected bilinear | bicubic, got {mode!r}")
    return mode


def flip_enabled(cfg: DataConfig, mode: str) -> bool:
    """Whether training flips (``data.flip``; None = the upstream recipe's choice): never for ssv2, whose labels
    name directions ("from left to right"; VideoMAE's ssv2.py does not flip); not in video pretraining (VideoMAE);
    otherwise yes (MAE / ConvMAE image pretraining, VideoMAE / ConvMAE finetuning)."""
    if cfg.dataset == "ssv2":
        if cfg.flip:
            raise ConfigError("data.flip=true: ssv2 labels name directions, a mirrored clip would carry the wrong "
                              "label; remove it")
        return False
    if cfg.flip is not None:
        return cfg.flip
    return not (mode == "pretrain" and cfg.dataset != "imagefolder")


def hflip_clip(x: torch.Tensor) -> torch.Tensor:
    """Mirror every frame left-right (the last dim is width)."""
    return x.flip(-1)


class ClipRandAugment:
    """timm ``rand_augment_transform`` with the same random ops / magnitudes for every frame of a clip.

    timm draws the ops from numpy's global RNG and magnitudes / probabilities from Python's ``random``; we save
    both states, run frame 0, and rewind them before each further frame, so all frames replay the same draws.
    """

    def __init__(self, spec: str, input_size: int, mean: list[float]) -> None:
        from PIL import Image
        from timm.data.auto_augment import rand_augment_transform

        # bicubic geometric ops, as both upstreams pass their train interpolation (bicubic) to RandAugment:
        # VideoMAE video_transforms.create_random_augment, MAE / ConvMAE timm create_transform; timm's own
        # default would pick bilinear or bicubic at random per op
        hparams = dict(translate_const=int(input_size * 0.45), img_mean=tuple(round(255 * m) for m in mean),
                       interpolation=Image.BICUBIC)
        self.op = rand_augment_transform(spec, hparams)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        from PIL import Image

        py_state, np_state = random.getstate(), np.random.get_state()
        out = []
        for frame in frames:
            random.setstate(py_state)
            np.random.set_state(np_state)
            out.append(np.asarray(self.op(Image.fromarray(frame))))
        return np.stack(out)


class ClipErasing:
    """timm RandomErasing (mode 'pixel', one box) on the clip viewed as a [C*T, H, W] image: one box, all frames."""

    def __init__(self, probability: float) -> None:
        from timm.data.random_erasing import RandomErasing

        self.op = RandomErasing(probability=probability, mode="pixel", max_count=1, device="cpu")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # [C, T, H, W], normalised
        c, t, h, w = x.shape
        return self.op(x.reshape(c * t, h, w)).reshape(c, t, h, w)


class ClipTransform:
    """uint8 [T, H, W, 3] -> float [3, T, S, S] for one mode; ``train`` picks the augmented pipeline."""

    def __init__(self, cfg: DataConfig, mode: str, train: bool) -> None:
        if mode not in ("pretrain", "finetune", "linprobe"):
            raise ValueError(f"mode: expected pretrain | finetune | linprobe, got {mode!r}")
        if mode == "pretrain" and cfg.pretrain_crop not in ("multiscale", "rrc"):
            raise ValueError(f"data.pretrain_crop: expected multiscale | rrc, got {cfg.pretrain_crop!r}")
        self.cfg, self.mode, self.train = cfg, mode, train
        self.flip = train and flip_enabled(cfg, mode)
        self.resize_mode = resize_mode(cfg)
        self.randaug = ClipRandAugment(cfg.randaug, cfg.input_size, cfg.mean) if (
            train and mode == "finetune" and cfg.randaug) else None
        self.erasing = ClipErasing(cfg.reprob) if train and mode == "finetune" and cfg.reprob > 0 else None
        self._scale, self._shift = normalization(cfg.mean, cfg.std, 4)

    def box(self, h: int, w: int, rng: random.Random) -> tuple[int, int, int, int]:
        cfg = self.cfg
        if not self.train:
            return resize_short_side_box(h, w, cfg.short_side_size, cfg.input_size)
        if self.mode == "pretrain" and cfg.pretrain_crop == "multiscale":
            return multiscale_crop_box(h, w, cfg.input_size, rng)
        scale = cfg.pretrain_rrc_scale if self.mode == "pretrain" else cfg.rrc_scale
        return rrc_box(h, w, tuple(scale), tuple(cfg.rrc_ratio), rng)

    def __call__(self, frames: np.ndarray, rng: random.Random | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 [T, H, W, 3] -> float [3, T, S, S], written into ``out`` when given (e.g. a batch row)."""
        rng = rng if rng is not None else random  # the module-level generator PyTorch seeds per worker
        if self.randaug is not None:
            frames = self.randaug(frames)
        x = crop_resize(frames, self.box(frames.shape[1], frames.shape[2], rng), self.cfg.input_size, self.resize_mode)
        if self.flip and rng.random() < 0.5:
            x = hflip_clip(x)
        if out is None:
            out = torch.empty((3, *x.shape[:1], *x.shape[2:]), dtype=torch.float32)
        x = torch.addcmul(self._shift, x.transpose(0, 1), self._scale, out=out)  # channels to the front
        if self.erasing is not None:
            x = self.erasing(x)
        return x
