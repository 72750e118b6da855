"""The model section of a run config (``model.*``). Only plain values: the registry builds the module."""

from __future__ import annotations

from dataclasses import dataclass

LOSS_TARGETS = ("videomae", "mae", "pixel")
POS_EMBEDS = ("fixed", "learnable")
CONV_INITS = ("official", "transformer")
TOKEN_PX = 16  # pixels per stage-3 token side (patch embeds 4 x 2 x 2), models/convmae.py
DEFAULT_TUBELET = 2  # frames per token when model.tubelet is None, models/registry.py


@dataclass
class ModelConfig:
    arch: str = "videoconvmae_tiny"  # registry family, e.g. convmae_base; the task appends _pretrain / _cls
    mask_type: str | None = None  # block | tube | random; None = block for images, tube for video
    mask_ratio: float | None = None  # fraction of stage-3 tokens hidden; None = 0.75 image / 0.9 video
    loss_target: str | None = None  # videomae | mae | pixel (see models/convmae.py); None = videomae video, mae image
    multiscale_decoder: bool = True  # fuse stride-4 / stride-2 convs of stages 1-2 into stage 3 (Eq. 1)
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
        if self.mask_type not in (None, "block", "tube", "random"):
            raise ValueError(f"model.mask_type: expected block|tube|random, got {self.mask_type!r}")
        if self.mask_ratio is not None and not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"model.mask_ratio: expected a value in [0, 1), got {self.mask_ratio}")
        for key, value, allowed in (("loss_target", self.loss_target, LOSS_TARGETS),
                                    ("pos_embed", self.pos_embed, POS_EMBEDS)):
            if value is not None and value not in allowed:
                raise ValueError(f"model.{key}: expected {'|'.join(allowed)}, got {value!r}")
        if self.conv_init not in CONV_INITS:
            raise ValueError(f"model.conv_init: expected {'|'.join(CONV_INITS)}, got {self.conv_init!r}")
        if self.mask_ratio is not None and not 0.0 < self.mask_ratio < 1.0:  # 0 hides nothing: loss and grads 0
            raise ValueError(f"model.mask_ratio: expected a value in (0, 1), got {self.mask_ratio}")

    def check_input(self, input_size: int, num_frames: int | None) -> None:
        """Raise ValueError unless the model takes ``input_size`` px clips of ``num_frames`` (None: images):
        sizes divisible by the stage-3 token (16 px; ``tubelet`` frames, arch default 2)."""
        if input_size < TOKEN_PX or input_size % TOKEN_PX:
            raise ValueError(f"data.input_size: expected a multiple of {TOKEN_PX} (the model's token size), got "
                             f"{input_size}")
        tubelet = self.tubelet or DEFAULT_TUBELET
        if num_frames is not None and self.arch.startswith("video") and (num_frames < tubelet or num_frames % tubelet):
            raise ValueError(f"data.num_frames: expected a multiple of model.tubelet={tubelet}, got {num_frames}")
