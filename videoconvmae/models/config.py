"""The model section of a run config (``model.*``). Only plain values: the registry builds the module."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

LOSS_TARGETS = ("videomae", "mae", "pixel")
POS_EMBEDS = ("fixed", "learnable")
CONV_INITS = ("official", "transformer")
MASK_TYPES = ("block", "tube", "random")
DEFAULT_TUBELET = 2  # frames per token when model.tubelet is None, models/registry.py
# The encoder's geometry, the one table every factor derives from: the spatial stride of patch_embed1..3 (ConvMAE;
# in time only patch_embed1 strides, by the tubelet).
STAGE_STRIDES = (4, 2, 2)
TOKEN_PX = math.prod(STAGE_STRIDES)  # pixels per stage-3 token side
# positions per stage-3 cell side at each level: pixels, stage 1, stage 2, stage 3 -> (16, 4, 2, 1)
CELL_SIDES = tuple(math.prod(STAGE_STRIDES[k:]) for k in range(len(STAGE_STRIDES) + 1))


def token_grid(sizes: Sequence[int], tubelet: int | None = None) -> tuple[int, ...]:
    """Pixels (H, W), or (T, H, W) with ``tubelet`` frames per token -> the stage-3 grid; one line when they do
    not divide."""
    patch = (TOKEN_PX,) * 2 if tubelet is None else (tubelet, TOKEN_PX, TOKEN_PX)
    sizes = tuple(int(v) for v in sizes)
    if len(sizes) != len(patch) or any(s % p for s, p in zip(sizes, patch)):
        raise ValueError(f"input: size {list(sizes)} must be divisible by the token size {list(patch)}")
    return tuple(s // p for s, p in zip(sizes, patch))


def check_mask(mask_type: str | None, ratio: float | None, spatial_dims: int | None = None, key: str = "") -> None:
    """The one check of a mask setting (None = not set): ``mask_type`` one of MASK_TYPES (``tube`` needs video),
    ``ratio`` in (0, 1) (0 hides nothing: loss and gradients would be 0). ``key`` prefixes the message."""
    if mask_type is not None and mask_type not in MASK_TYPES:
        raise ValueError(f"{key}mask_type: expected {'|'.join(MASK_TYPES)}, got {mask_type!r}")
    if mask_type == "tube" and spatial_dims == 2:
        raise ValueError(f"{key}mask_type: 'tube' needs a video (t, h, w) grid, got an image model / grid")
    if ratio is not None and not 0.0 < ratio < 1.0:
        raise ValueError(f"{key}mask_ratio: expected a value in (0, 1), got {ratio}")


@dataclass
class ModelConfig:
    arch: str = "videoconvmae_tiny"  # registry family, e.g. convmae_base; the task appends _pretrain / _cls
    mask_type: str | None = None  # block | tube | random; None = block for images, tube for video
    mask_ratio: float | None = None  # fraction of stage-3 tokens hidden; None = 0.75 image / 0.9 video
    loss_target: str | None = None  # videomae | mae | pixel (models/convmae.py); None = videomae video, mae image
    multiscale_decoder: bool = True  # fuse stride-4 / stride-2 convs of stages 1-2 into stage 3 (Eq. 1)
    decoder_depth: int | None = None  # pretrain decoder blocks; None = arch default (VideoMAE's 4 video, 8 image)
    decoder_dim: int | None = None  # pretrain decoder width; None = arch default
    decoder_heads: int | None = None  # pretrain decoder attention heads (must divide decoder_dim); None = default
    sparse_stages: bool = True  # run conv stages on visible stage-3 cells only (exact; dense is the reference)
    tubelet: int | None = None  # temporal size of the cube embed; None = arch default (2)
    temporal_kernel: int | None = None  # temporal size of the depthwise conv; None = arch default (3)
    pos_embed: str | None = None  # classifier: fixed | learnable; None = learnable image (ConvMAE), fixed video
    conv_init: str = "official"  # official (ConvMAE: stage-1/2 layers keep PyTorch's init) | transformer
    drop_path_rate: float = 0.0  # stochastic depth rate at the last block
    head_init_std: float = 2e-5  # classifier head init std: MAE's 2e-5 suits a pretrained encoder
    num_classes: int = 0  # classifier outputs; 0 = number of classes in the dataset
    grad_checkpointing: bool = False  # recompute block activations in backward to save memory
    pretrained: str = ""  # checkpoint to initialise from (ours or official ConvMAE; 2D is inflated to 3D)

    def __post_init__(self) -> None:
        check_mask(self.mask_type, self.mask_ratio, key="model.")
        for key in ("decoder_depth", "decoder_dim", "decoder_heads"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"model.{key}: expected a positive integer or null, got {value}")
        choices = (("loss_target", self.loss_target, LOSS_TARGETS), ("pos_embed", self.pos_embed, POS_EMBEDS),
                   ("conv_init", self.conv_init, CONV_INITS))
        for key, value, allowed in choices:
            if value is not None and value not in allowed:
                raise ValueError(f"model.{key}: expected {'|'.join(allowed)}, got {value!r}")

    def check_input(self, input_size: int, num_frames: int | None) -> None:
        """Raise ValueError unless the model takes ``input_size`` px clips of ``num_frames`` (None: images):
        sizes divisible by the stage-3 token (TOKEN_PX; ``tubelet`` frames, arch default 2)."""
        if input_size < TOKEN_PX or input_size % TOKEN_PX:
            raise ValueError(f"data.input_size: expected a multiple of {TOKEN_PX} (the model's token size), got "
                             f"{input_size}")
        tubelet = self.tubelet or DEFAULT_TUBELET
        if num_frames is not None and self.arch.startswith("video") and (num_frames < tubelet or num_frames % tubelet):
            raise ValueError(f"data.num_frames: expected a multiple of model.tubelet={tubelet}, got {num_frames}")
