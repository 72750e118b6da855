"""Every registered model as a timm model: ``timm.create_model("videoconvmae_base_cls", num_classes=400)``.

As VideoMAE does (its ``modeling_finetune.py`` registers with ``timm.models.register_model``), the entrypoints
are registered when this module is imported; ``videoconvmae.models.registry`` imports it, so anything that can
build one of our models has registered them (``import videoconvmae.models.timm_models`` does it explicitly).
Each entrypoint calls our ``create_model`` (one place builds a model), so timm and we give the same module.

``model.pretrained_cfg`` is timm's ``PretrainedCfg`` plus what a video model needs: ``num_frames`` and
``tubelet`` (None for images) and ``key_layout``, the state-dict layout the weights use. There are no
downloadable weights: ``pretrained=True`` loads a local file given as
``pretrained_cfg_overlay=dict(file=PATH)`` (ours or an official ConvMAE checkpoint, through ``load_pretrained``).
"""

from __future__ import annotations

import sys
from collections import deque
from dataclasses import dataclass

import torch.nn as nn

# isort: off
from videoconvmae import compat  # noqa: F401  (the torchvision shim must load before timm)
from timm.models import register_model, resolve_pretrained_cfg
from timm.models._pretrained import DefaultCfg, PretrainedCfg
# isort: on

from videoconvmae.models.registry import FAMILIES, create_model, list_models, split_name

KEY_LAYOUT = ("Alpha-VL/ConvMAE: patch_embed1..3 (conv embeds), patch_embed4 (Linear), blocks1 / blocks2 (conv "
              "blocks; the official depthwise conv is blocks{1,2}.i.attn, its 1x1 conv1 / conv2 [C, C, 1, 1]), "
              "blocks3 (transformer), norm, stage1_output_decode, stage2_output_decode, decoder_*, mask_token; "
              "classifier fc_norm, head. No position-embedding table (fixed sin-cos from the grid).")


@dataclass
class ConvMAEPretrainedCfg(PretrainedCfg):
    num_frames: int | None = None  # frames per clip the model was configured for (None: an image model)
    tubelet: int | None = None  # frames per stage-1 cube (None: an image model)
    key_layout: str = KEY_LAYOUT  # which checkpoint key layout the weights follow


def pretrained_cfg_for(name: str) -> ConvMAEPretrainedCfg:
    """The default cfg of a registered name: its family's input size, frames, mean / std (models/registry.py)."""
    family_name, suffix = split_name(name)
    family = FAMILIES[family_name]
    video = family.spatial_dims == 3
    return ConvMAEPretrainedCfg(
        input_size=(3, family.input_size, family.input_size), mean=family.mean, std=family.std,
        interpolation="bicubic",
        crop_pct=1.0 if video or family.size == "tiny" else 0.875,  # video: short side = crop (VideoMAE); 256->224
        num_classes=1000 if suffix == "cls" else 0, first_conv="patch_embed1.proj",
        classifier="head" if suffix == "cls" else None, num_frames=family.num_frames,
        tubelet=2 if video else None, origin_url="https://github.com/Alpha-VL/ConvMAE",
        paper_ids="arXiv:2205.03892", paper_name="ConvMAE: Masked Convolution Meets Masked Autoencoders",
        license="mit")


def _entrypoint(name: str):
    def build(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay: dict | None = None,
              cache_dir=None, **kwargs) -> nn.Module:
        cfg = resolve_pretrained_cfg(name, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=pretrained_cfg_overlay)
        model = create_model(name, **kwargs)
        if pretrained:
            if not cfg.file:
                raise ValueError(f"{name}: no downloadable weights; pass pretrained_cfg_overlay=dict(file=PATH) "
                                 "(ours or an official ConvMAE checkpoint)")
            from videoconvmae.models.checkpoint import load_pretrained

            print(f"loaded {cfg.file}: {load_pretrained(model, cfg.file).summary()}")
        model.pretrained_cfg = model.default_cfg = cfg.to_dict()
        return model

    build.__name__ = build.__qualname__ = name
    build.__module__ = __name__
    build.__doc__ = f"``{name}``: videoconvmae.models.create_model({name!r}, **kwargs) through timm."
    return build


default_cfgs = {name: DefaultCfg(tags=deque([""]), cfgs={"": pretrained_cfg_for(name)}) for name in list_models()}
for _name in list_models():
    setattr(sys.modules[__name__], _name, register_model(_entrypoint(_name)))
