"""Named model factories: ``create_model(name, **overrides)``, ``list_models()``, ``build_model(cfg, task)``.

Names: ``{family}_{pretrain|cls}`` with families ``convmae_{tiny,small,base,base_star,large,huge}`` (images,
paper Table 7) and ``videoconvmae_{tiny,small,base,large}`` (video: the same encoders with a (tubelet 2, 4, 4)
cube embed and a temporal depthwise kernel of 3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch.nn as nn

from videoconvmae.models.config import DEFAULT_TUBELET, ModelConfig, token_grid
from videoconvmae.models.convmae import IMAGENET_MEAN, IMAGENET_STD, ConvMAEClassifier, ConvMAEPretrain
from videoconvmae.task import Task


@dataclass(frozen=True)
class Size:
    dims: tuple[int, int, int]  # [C1, C2, C3]
    depths: tuple[int, int, int]  # [L1, L2, L3]
    mlp_ratios: tuple[float, float, float]  # [P1, P2, P3]
    num_heads: int  # H_a, stage-3 heads
    paper_params_m: float | None = None  # Table 7 encoder parameters (M); None for debug sizes


SIZES: dict[str, Size] = {
    "tiny": Size((32, 48, 64), (1, 1, 2), (4, 4, 4), 2),
    "small": Size((128, 256, 384), (2, 2, 11), (4, 4, 4), 6, 22),
    "base": Size((256, 384, 768), (2, 2, 11), (4, 4, 4), 12, 84),
    "base_star": Size((256, 384, 768), (2, 2, 11), (8, 8, 4), 12, 88),
    "large": Size((384, 768, 1024), (2, 2, 23), (8, 8, 4), 16, 322),
    "huge": Size((768, 1024, 1280), (2, 2, 31), (8, 8, 4), 16, 666),
}


@dataclass(frozen=True)
class Family:
    """A model family and the defaults a run of it starts from (the presets', timm's ``pretrained_cfg``)."""

    size: str
    spatial_dims: int  # 2 images, 3 video
    decoder: tuple[int, int, int]  # (depth, dim, heads)
    mean: tuple[float, float, float] = IMAGENET_MEAN  # video too, as VideoMAE normalises
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def input_size(self) -> int:  # tiny: the CPU debug presets
        return 64 if self.size == "tiny" else 224

    @property
    def num_frames(self) -> int | None:  # VideoMAE's 16 (tiny 8); None for images
        return None if self.spatial_dims == 2 else 8 if self.size == "tiny" else 16

    @property
    def mask_type(self) -> str:  # VideoMAE's tube / ConvMAE's block-wise
        return "tube" if self.spatial_dims == 3 else "block"

    @property
    def mask_ratio(self) -> float:  # VideoMAE's 90% / ConvMAE's 75%
        return 0.9 if self.spatial_dims == 3 else 0.75

    @property
    def loss_target(self) -> str:  # VideoMAE's per-channel normalised target / ConvMAE's norm_pix_loss
        return "videomae" if self.spatial_dims == 3 else "mae"


IMAGE_DECODER = (8, 512, 16)  # the official ConvMAE decoder
# VideoMAE's decoders (modeling_pretrain.py pretrain_videomae_{small,base,large}_patch16_224; depth 4 as its
# scripts' --decoder_depth 4), so a VideoConvMAE run compares with the VideoMAE of the same size
VIDEO_DECODERS = {"small": (4, 192, 3), "base": (4, 384, 6), "large": (4, 512, 8)}
TINY_DECODER = (1, 64, 2)

FAMILIES: dict[str, Family] = {
    **{f"convmae_{s}": Family(s, 2, TINY_DECODER if s == "tiny" else IMAGE_DECODER) for s in SIZES},
    **{f"videoconvmae_{s}": Family(s, 3, VIDEO_DECODERS.get(s, TINY_DECODER))
       for s in ("tiny", "small", "base", "large")},
}
MODEL_SUFFIXES = tuple(dict.fromkeys(t.model_suffix for t in Task))  # pretrain, cls


def _kwargs(family: Family) -> dict:
    size = SIZES[family.size]
    kw = dict(dims=size.dims, depths=size.depths, mlp_ratios=size.mlp_ratios, num_heads=size.num_heads,
              spatial_dims=family.spatial_dims)
    if family.spatial_dims == 3:
        kw.update(tubelet=DEFAULT_TUBELET, temporal_kernel=3)
    return kw


def list_models() -> list[str]:
    return sorted(f"{fam}_{suffix}" for fam in FAMILIES for suffix in MODEL_SUFFIXES)


def split_name(name: str) -> tuple[str, str]:
    """'convmae_base_pretrain' -> ('convmae_base', 'pretrain'); one clear line for an unknown name."""
    family, _, suffix = name.rpartition("_")
    if family not in FAMILIES or suffix not in MODEL_SUFFIXES:
        raise ValueError(f"model {name!r} is not registered (known: {', '.join(list_models())})")
    return family, suffix


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registered model; ``overrides`` replace constructor arguments (e.g. ``mask_ratio=0.5``)."""
    family_name, suffix = split_name(name)
    family = FAMILIES[family_name]
    kw = _kwargs(family)
    if suffix == "pretrain":
        depth, dim, heads = family.decoder
        kw.update(decoder_depth=depth, decoder_dim=dim, decoder_heads=heads, mask_type=family.mask_type,
                  mask_ratio=family.mask_ratio, loss_target=family.loss_target)
        cls: Callable[..., nn.Module] = ConvMAEPretrain
    else:
        cls = ConvMAEClassifier
    kw.update(overrides)
    try:
        return cls(**kw)
    except TypeError as e:
        raise ValueError(f"model {name!r}: bad override ({e})") from None


def build_model(model_cfg: ModelConfig, task: str, num_classes: int = 0, *,
                input_shape: Sequence[int] | None = None,
                input_norm: tuple[Sequence[float], Sequence[float]] | None = None) -> nn.Module:
    """The model for a run: pretrain model for task ``pretrain``, classifier otherwise.

    ``num_classes`` is the dataset's class count; ``model_cfg.num_classes > 0`` overrides it. ``sparse_stages``
    selects an execution strategy only: the visible-only path (models/sparse.py) is exact. ``input_shape`` is the
    input's (H, W) or (T, H, W) in pixels (sizes a learnable ``pos_embed``; default 224 px, 16 frames);
    ``input_norm`` the (mean, std) the data normalised with (the ``videomae`` loss target undoes it; default
    ImageNet's, as VideoMAE).
    """
    if model_cfg.arch not in FAMILIES:
        raise ValueError(f"model.arch: unknown family {model_cfg.arch!r} (known: {', '.join(sorted(FAMILIES))})")
    is_video = FAMILIES[model_cfg.arch].spatial_dims == 3
    overrides: dict = {"drop_path_rate": model_cfg.drop_path_rate}
    if is_video:
        if model_cfg.tubelet is not None:
            overrides["tubelet"] = model_cfg.tubelet
        if model_cfg.temporal_kernel is not None:
            overrides["temporal_kernel"] = model_cfg.temporal_kernel
    overrides["conv_init"] = model_cfg.conv_init
    if input_shape is not None:
        overrides["pos_grid"] = token_grid(input_shape, overrides.get("tubelet", DEFAULT_TUBELET) if is_video else None)
    if task == "pretrain":
        if model_cfg.pos_embed == "learnable":
            raise ValueError("model.pos_embed: pretraining uses the fixed sin-cos table (ConvMAE, VideoMAE); "
                             "'learnable' applies to finetune / linprobe")
        overrides.update(multiscale_decoder=model_cfg.multiscale_decoder, sparse_stages=model_cfg.sparse_stages)
        chosen = ("mask_type", "mask_ratio", "loss_target", "decoder_depth", "decoder_dim", "decoder_heads")
        overrides.update({k: getattr(model_cfg, k) for k in chosen if getattr(model_cfg, k) is not None})  # None: arch
        _, dim, heads = FAMILIES[model_cfg.arch].decoder
        dim, heads = overrides.get("decoder_dim", dim), overrides.get("decoder_heads", heads)
        if dim % heads:
            raise ValueError(f"model.decoder_dim={dim} is not divisible by model.decoder_heads={heads}")
        if input_norm is not None:
            overrides.update(input_mean=tuple(input_norm[0]), input_std=tuple(input_norm[1]))
        model = create_model(f"{model_cfg.arch}_pretrain", **overrides)
    else:
        classes = model_cfg.num_classes or num_classes
        if classes <= 0:
            raise ValueError(f"model.num_classes: task {task!r} needs a class count > 0 (got {classes})")
        if model_cfg.pos_embed is not None:  # None: the classifier's default (ConvMAEClassifier)
            overrides["pos_embed"] = model_cfg.pos_embed
        model = create_model(f"{model_cfg.arch}_cls", num_classes=classes, head_init_std=model_cfg.head_init_std,
                             **overrides)
    model.set_grad_checkpointing(model_cfg.grad_checkpointing)
    if model_cfg.pretrained:
        from videoconvmae.models.checkpoint import load_pretrained

        report = load_pretrained(model, model_cfg.pretrained)
        print(f"loaded {model_cfg.pretrained}: {report.summary()}")
    return model


ENCODER_PREFIXES = ("patch_embed", "blocks1.", "blocks2.", "blocks3.", "norm.", "fc_norm.")


def count_params(model: nn.Module) -> dict[str, int]:
    """``encoder``: what Table 7 counts (patch embeds, the three stages, the final norm); ``total``: everything.

    The multi-scale fusion convs (``stage*_output_decode``), the decoder and the head are not encoder: with the
    fusion convs ConvMAE-B would be 88.8 M instead of the paper's 84 M; without them it is 84.5 M.
    """
    encoder = sum(p.numel() for n, p in model.named_parameters() if n.startswith(ENCODER_PREFIXES))
    return {"encoder": encoder, "total": sum(p.numel() for p in model.parameters())}


# Every name above is also a timm model (timm.create_model / timm.list_models); the module registers on import.
from videoconvmae.models import timm_models as _timm_models  # noqa: E402, F401
