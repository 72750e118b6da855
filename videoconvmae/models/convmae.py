"""ConvMAE / VideoConvMAE: the hybrid conv-transformer encoder, the masked-autoencoder pretrain model, the classifier.

One code path for images (``spatial_dims=2``, input ``[N, C, H, W]``) and video (``spatial_dims=3``, input
``[N, C, T, H, W]``). The stage-3 grid is (H/16, W/16) or (T/tubelet, H/16, W/16), taken from the input: any
size divisible by 16 (and T by the tubelet) works; position embeddings are computed for it.

State-dict keys follow the official ConvMAE layout (Alpha-VL/ConvMAE; listed in ``timm_models.KEY_LAYOUT``).

Position embeddings: pretraining adds the fixed sin-cos table computed from the input's grid (ConvMAE and
VideoMAE pretrain with fixed tables), so it is not in the state dict. A classifier with ``pos_embed="learnable"``
(ConvMAE finetuning learns its table) holds a ``pos_embed`` parameter [1, L, C3] for ``pos_grid``, initialised
from the same sin-cos table (what ConvMAE's finetuning starts from: it loads the pretrain checkpoint's fixed
table), and resampled to the input's grid when they differ (``layers.resample_pos_embed``).

Initialisation (``conv_init``): ``official`` as Alpha-VL/ConvMAE, whose stage-1/2 layers are all ``nn.Conv2d``
and so keep PyTorch's default init (its ``_init_weights`` touches only ``nn.Linear`` / ``nn.LayerNorm``): our
Linear 1x1 convs of stages 1-2 keep PyTorch's Linear default (the same distribution as a 1x1 Conv2d's), only
``patch_embed3`` is xavier-initialised as a Linear (pretraining, ``initialize_weights``), and the classifier's
conv embeds keep the default too (ConvViT). ``transformer`` initialises every Linear of every stage like the
transformer's (xavier / trunc-normal) and all three conv embeds xavier as Linear.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from videoconvmae.models.config import CELL_SIDES, LOSS_TARGETS, STAGE_STRIDES, TOKEN_PX, check_mask, token_grid
from videoconvmae.models.layers import (
    TRANSFORMER_NORM_EPS,
    Block,
    ConvBlock,
    DenseLayout,
    PatchEmbed,
    channels_first,
    conv_nd,
    resample_pos_embed,
    sincos_pos_embed,
    trunc_normal_,
)
from videoconvmae.models.masking import make_mask, sample_masks, upsample_keep, visible_indices
from videoconvmae.models.sparse import VisibleCells


@dataclass
class EncoderOutput:
    latent: torch.Tensor  # [N, L_vis, C3] stage-3 tokens after fusion and norm (all L tokens when unmasked)
    stage1: torch.Tensor  # in the encoder's layout: dense [N, *grid1, C1] (masked positions hold garbage by
    #                       design) or visible cells [N, L_vis, 16, C1] (models/sparse.py)
    stage2: torch.Tensor  # dense [N, *grid2, C2] or visible cells [N, L_vis, 4, C2]
    visible_idx: torch.Tensor | None  # [N, L_vis] indices into the stage-3 grid; None = all tokens
    sparse: bool = False  # whether the layout was the visible-cell one


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConvMAEEncoder(nn.Module):
    """Stages 1-2: conv embeds + masked conv blocks; stage 3: embed -> Linear -> + pos embed -> transformer.

    ``stage_decodes`` adds the multi-scale fusion convs (stride-4 conv C1->C3 on stage 1, stride-2 conv C2->C3 on
    stage 2, Eq. 1); ``fuse_stages`` adds their output to the stage-3 tokens before ``norm`` (off = the paper's
    ablation without the multi-scale decoder); ``final_norm`` the LayerNorm after stage 3. The classifier has
    neither decodes nor norm (as the official global-pool ConvViT).
    """

    def __init__(self, dims: Sequence[int] = (256, 384, 768), depths: Sequence[int] = (2, 2, 11),
                 mlp_ratios: Sequence[float] = (4, 4, 4), num_heads: int = 12, spatial_dims: int = 2,
                 in_chans: int = 3, tubelet: int = 2, temporal_kernel: int = 3, drop_path_rate: float = 0.0,
                 stage_decodes: bool = True, fuse_stages: bool = True, final_norm: bool = True,
                 pos_embed: str = "fixed", pos_grid: Sequence[int] | None = None, conv_init: str = "official"):
        super().__init__()
        conv_nd(spatial_dims)  # validates spatial_dims
        c1, c2, c3 = dims
        self.dims, self.depths, self.spatial_dims, self.in_chans = tuple(dims), tuple(depths), spatial_dims, in_chans
        self.tubelet = tubelet if spatial_dims == 3 else 1
        self.temporal_kernel = temporal_kernel

        def kernel(stride: int, t: int = 1) -> tuple[int, ...]:
            return (stride, stride) if spatial_dims == 2 else (t, stride, stride)

        s1, s2, s3 = STAGE_STRIDES
        self.patch_embed1 = PatchEmbed(in_chans, c1, kernel(s1, self.tubelet), spatial_dims)
        self.patch_embed2 = PatchEmbed(c1, c2, kernel(s2), spatial_dims)
        self.patch_embed3 = PatchEmbed(c2, c3, kernel(s3), spatial_dims)
        self.patch_embed4 = nn.Linear(c3, c3)

        total = sum(depths)  # stochastic depth grows linearly with depth (plain floats: works on the meta device)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        d1, d2, d3 = depths
        self.blocks1 = nn.ModuleList(
            ConvBlock(c1, mlp_ratios[0], spatial_dims, temporal_kernel, dpr[i]) for i in range(d1))
        self.blocks2 = nn.ModuleList(
            ConvBlock(c2, mlp_ratios[1], spatial_dims, temporal_kernel, dpr[d1 + i]) for i in range(d2))
        self.blocks3 = nn.ModuleList(Block(c3, num_heads, mlp_ratios[2], dpr[d1 + d2 + i]) for i in range(d3))
        if stage_decodes:  # one stage-3 cell per window
            w1, w2 = kernel(CELL_SIDES[1]), kernel(CELL_SIDES[2])
            self.stage1_output_decode = conv_nd(spatial_dims)(c1, c3, w1, stride=w1)
            self.stage2_output_decode = conv_nd(spatial_dims)(c2, c3, w2, stride=w2)
        self.fuse_stages = stage_decodes and fuse_stages
        self.norm = nn.LayerNorm(c3, eps=TRANSFORMER_NORM_EPS) if final_norm else nn.Identity()
        self.grad_checkpointing = False
        self._pos_cache: dict[tuple, torch.Tensor] = {}
        if pos_embed not in ("fixed", "learnable"):
            raise ValueError(f"pos_embed: expected fixed | learnable, got {pos_embed!r}")
        if conv_init not in ("official", "transformer"):
            raise ValueError(f"conv_init: expected official | transformer, got {conv_init!r}")
        self.conv_init = conv_init
        side = 224 // TOKEN_PX  # default: the grid of a 224-px input (16 frames), the size upstream tables are made for
        self.pos_grid = tuple(pos_grid or ((side, side) if spatial_dims == 2 else (16 // self.tubelet, side, side)))
        if len(self.pos_grid) != spatial_dims:
            raise ValueError(f"pos_grid: expected {spatial_dims} sizes, got {list(self.pos_grid)}")
        self.pos_embed = nn.Parameter(sincos_pos_embed(c3, self.pos_grid)[None]) if pos_embed == "learnable" \
            else None

    # -- geometry ---------------------------------------------------------------------------------------------
    @property
    def patch_size(self) -> tuple[int, ...]:
        """Pixels per stage-3 token: (16, 16) or (tubelet, 16, 16)."""
        return (TOKEN_PX, TOKEN_PX) if self.spatial_dims == 2 else (self.tubelet, TOKEN_PX, TOKEN_PX)

    def token_grid(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        """The stage-3 grid for an input of shape ``[N, C, (T,) H, W]``; raises one clear line on a bad size."""
        expected = 2 + self.spatial_dims
        if len(x_shape) != expected:
            want = "[N, C, H, W]" if self.spatial_dims == 2 else "[N, C, T, H, W]"
            raise ValueError(f"input: expected {want} for this {self.spatial_dims}D model, got {list(x_shape)}")
        if x_shape[1] != self.in_chans:
            raise ValueError(f"input: expected {self.in_chans} channels, got {x_shape[1]}")
        return token_grid(x_shape[2:], self.tubelet if self.spatial_dims == 3 else None)

    def fixed_pos_embed(self, grid: Sequence[int], dim: int, like: torch.Tensor) -> torch.Tensor:
        """[1, L, dim] fixed sin-cos embedding for ``grid``, cached per (grid, dim, device, dtype)."""
        key = (tuple(grid), dim, like.device, like.dtype)
        if key not in self._pos_cache:
            self._pos_cache[key] = sincos_pos_embed(dim, grid).to(device=like.device, dtype=like.dtype)[None]
        return self._pos_cache[key]

    def encoder_pos_embed(self, grid: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        """[1, L, C3] added to the stage-3 tokens: the learned table (resampled when ``grid`` differs from
        ``pos_grid``) or the fixed sin-cos one."""
        if self.pos_embed is None:
            return self.fixed_pos_embed(grid, self.dims[-1], like)
        table = self.pos_embed if tuple(grid) == self.pos_grid else \
            resample_pos_embed(self.pos_embed, self.pos_grid, grid)
        return table.to(like.dtype)

    # -- encoder ----------------------------------------------------------------------------------------------
    def _run(self, block: nn.Module, *args: torch.Tensor | None) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def stage_keeps(self, mask: torch.Tensor, grid: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Visible masks for stages 1 and 2, [N, *grid_k, 1], upsampled (nearest) x4 / x2 from the stage-3 mask."""
        keep3 = (~mask).reshape(mask.shape[0], *grid)
        return upsample_keep(keep3, CELL_SIDES[1])[..., None], upsample_keep(keep3, CELL_SIDES[2])[..., None]

    def layouts(self, mask: torch.Tensor | None, grid: Sequence[int], dtype: torch.dtype
                ) -> tuple[torch.Tensor | None, list]:
        """(visible_idx [N, K] or None, the layout of each level: pixels, stages 1, 2, 3): every position without
        a mask; with one, the visible cells (``sparse_stages``) or the dense masked-convolution reference."""
        if mask is None:
            return None, [DenseLayout()] * 4
        visible_idx = visible_indices(mask)
        if self.sparse_stages:
            return visible_idx, [VisibleCells(visible_idx, grid, side, self.tubelet if level == 0 else 1)
                                 for level, side in enumerate(CELL_SIDES)]
        keep1, keep2 = (k.to(dtype) for k in self.stage_keeps(mask, grid))
        return visible_idx, [DenseLayout(), DenseLayout(keep1), DenseLayout(keep2), DenseLayout(None, visible_idx)]

    def encode(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> EncoderOutput:
        """x: [N, C, (T,) H, W]; mask: [N, L] bool, True = masked (None = encode every token, no masking)."""
        grid = self.token_grid(x.shape)
        visible_idx, (pixels, level1, level2, level3) = self.layouts(mask, grid, x.dtype)
        h = self.patch_embed1(pixels.from_pixels(x), pixels)
        for blk in self.blocks1:
            h = self._run(blk, h, level1)
        stage1 = h
        h = self.patch_embed2(h, level1)
        for blk in self.blocks2:
            h = self._run(blk, h, level2)
        stage2 = h
        h = self.patch_embed4(self.patch_embed3(h, level2))  # [N, *grid, C3] or [N, K, 1, C3]
        h = level3.tokens(h, self.encoder_pos_embed(grid, h))
        for blk in self.blocks3:
            h = self._run(blk, h)
        if self.fuse_stages:  # Eq. 1: each stage-3 cell's window of stages 1 and 2
            h = h + (level3.tokens(level1.window_conv(self.stage1_output_decode, stage1))
                     + level3.tokens(level2.window_conv(self.stage2_output_decode, stage2)))
        return EncoderOutput(self.norm(h), stage1, stage2, visible_idx, isinstance(level1, VisibleCells))

    def forward_features(self, x: torch.Tensor, stages: Sequence[int] = (1, 2, 3, 4)) -> list[torch.Tensor]:
        """The multi-scale maps ``E_s`` for s in ``stages`` (paper §2.3, for detection / segmentation heads),
        channels-first, every token of ``x`` encoded (no mask):

        E1 [N, C1, (T',) H/4, W/4], E2 [N, C2, (T',) H/8, W/8], E3 [N, C3, (T',) H/16, W/16] (the encoder's stage-3
        output: with the fusion and final norm where the model has them), E4 [N, C3, (T',) H/32, W/32] = 2x2 max
        pooling of E3 (space only). Video: T' = T / tubelet at every scale (stages 2-3 keep the time axis).
        """
        stages = tuple(stages)
        if not stages or any(s not in (1, 2, 3, 4) for s in stages):
            raise ValueError(f"stages: expected a non-empty subset of (1, 2, 3, 4), got {stages}")
        enc = self.encode(x)
        grid = self.token_grid(x.shape)
        e3 = channels_first(enc.latent.reshape(x.shape[0], *grid, -1))
        maps = {1: channels_first(enc.stage1), 2: channels_first(enc.stage2), 3: e3}
        if 4 in stages:
            maps[4] = F.max_pool2d(e3, 2) if self.spatial_dims == 2 else F.max_pool3d(e3, (1, 2, 2))
        return [maps[s].contiguous() for s in stages]

    sparse_stages = False  # visible-only stages 1-2 when a mask is given (the pretrain model turns it on)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"} if self.pos_embed is not None else set()

    def init_weights(self, linear_init: str = "xavier") -> None:
        """MAE pretrain init (xavier-uniform Linear) or ViT finetune init (trunc normal); which layers it touches
        follows ``conv_init`` (module docstring)."""

        def init(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                if linear_init == "xavier":
                    nn.init.xavier_uniform_(m.weight)
                else:
                    trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

        if self.conv_init == "transformer":
            self.apply(init)
            embeds = (self.patch_embed1, self.patch_embed2, self.patch_embed3)
        else:
            conv_stages = [self.patch_embed1, self.patch_embed2, *self.blocks1, *self.blocks2]
            untouched = {id(m) for stage in conv_stages for m in stage.modules()}
            self.apply(lambda m: None if id(m) in untouched else init(m))
            embeds = (self.patch_embed3,) if linear_init == "xavier" else ()
        for embed in embeds:
            w = embed.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))


class ConvMAEPretrain(ConvMAEEncoder):
    """Masked autoencoder: encoder on visible tokens, multi-scale fusion, transformer decoder, masked MSE loss.

    ``model(x, mask=None, generator=None, mask_seeds=None) -> {"loss", "pred" [N, L, patch_dim], "mask" [N, L] bool
    True = masked, "latent" [N, L_vis, C3]}``. An explicit ``mask`` is used exactly as given.

    ``loss_target`` (what ``pred`` regresses; every layout is ``patchify``'s, channel innermost, so
    ``unpatchify`` and ``pred_to_input`` render any of them):
    - ``mae``: MAE / ConvMAE ``norm_pix_loss`` (models_convmae.py ``forward_loss``): the model input's patch
      normalised over ALL its values, ``(t - mean) / sqrt(var + 1e-6)`` (unbiased var);
    - ``videomae``: VideoMAE (engine_for_pretraining.py ``train_one_epoch``): the input un-normalised to [0, 1]
      with ``input_mean`` / ``input_std``, each patch normalised PER CHANNEL over its tubelet*16*16 values,
      ``(t - mean) / (std + 1e-6)`` (unbiased std), flattened ``(p c)``;
    - ``pixel``: the model input's patch as it is (MAE with ``norm_pix_loss=False``).
    """

    def __init__(self, *, mask_type: str, mask_ratio: float, decoder_dim: int = 512, decoder_depth: int = 8,
                 decoder_heads: int = 16, decoder_mlp_ratio: float = 4.0, loss_target: str,
                 multiscale_decoder: bool = True, sparse_stages: bool = True,
                 input_mean: Sequence[float] = IMAGENET_MEAN, input_std: Sequence[float] = IMAGENET_STD,
                 **encoder_kwargs):
        super().__init__(stage_decodes=True, fuse_stages=multiscale_decoder, final_norm=True, **encoder_kwargs)
        self.sparse_stages = sparse_stages  # exact: same numerics as the dense reference, less work
        check_mask(mask_type, mask_ratio, self.spatial_dims)  # no default here: the family's (registry.Family)
        self.mask_type, self.mask_ratio = mask_type, mask_ratio
        self.loss_target = loss_target  # no default here either: the family's (registry.Family)
        if self.loss_target not in LOSS_TARGETS:
            raise ValueError(f"loss_target: expected {'|'.join(LOSS_TARGETS)}, got {self.loss_target!r}")
        if len(input_mean) != self.in_chans or len(input_std) != self.in_chans:
            raise ValueError(f"input_mean / input_std: expected {self.in_chans} values each")
        # the normalisation the data applied, undone by the videomae target; not weights, so not in the state dict
        self.register_buffer("input_mean", torch.tensor(input_mean, dtype=torch.float32), persistent=False)
        self.register_buffer("input_std", torch.tensor(input_std, dtype=torch.float32), persistent=False)
        c3 = self.dims[-1]
        self.decoder_embed = nn.Linear(c3, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, decoder_heads, decoder_mlp_ratio) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=TRANSFORMER_NORM_EPS)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_dim)
        self.init_weights("xavier")
        nn.init.normal_(self.mask_token, std=0.02)

    @property
    def patch_dim(self) -> int:
        """Values per reconstructed patch: 16*16*3 = 768 (image) or tubelet*16*16*3 (video)."""
        return self.in_chans * math.prod(self.patch_size)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}  # a learned token embedding, like timm's cls_token

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, L, p*q*C] ((p, q, c) per patch, as MAE); video [N, C, T, H, W] -> (u, p, q, c)."""
        self.token_grid(x.shape)
        if self.spatial_dims == 2:
            return rearrange(x, "n c (h p) (w q) -> n (h w) (p q c)", p=TOKEN_PX, q=TOKEN_PX)
        return rearrange(x, "n c (t u) (h p) (w q) -> n (t h w) (u p q c)", u=self.tubelet, p=TOKEN_PX, q=TOKEN_PX)

    def unpatchify(self, patches: torch.Tensor, x_shape: Sequence[int]) -> torch.Tensor:
        """Inverse of ``patchify`` for an input of shape ``x_shape``."""
        grid = self.token_grid(x_shape)
        if self.spatial_dims == 2:
            return rearrange(patches, "n (h w) (p q c) -> n c (h p) (w q)", h=grid[0], w=grid[1], p=TOKEN_PX,
                             q=TOKEN_PX)
        return rearrange(patches, "n (t h w) (u p q c) -> n c (t u) (h p) (w q)", t=grid[0], h=grid[1], w=grid[2],
                         u=self.tubelet, p=TOKEN_PX, q=TOKEN_PX)

    def _check_mask(self, mask: torch.Tensor, n: int, grid: Sequence[int]) -> torch.Tensor:
        length = math.prod(grid)
        if mask.dtype != torch.bool or tuple(mask.shape) != (n, length):
            raise ValueError(f"mask: expected bool [N={n}, L={length}] (True = masked) for grid {tuple(grid)}, "
                             f"got {mask.dtype} {list(mask.shape)}")
        return mask

    def forward_decoder(self, latent: torch.Tensor, mask: torch.Tensor, visible_idx: torch.Tensor,
                        grid: Sequence[int]) -> torch.Tensor:
        """latent [N, L_vis, C3] -> pred [N, L, patch_dim]: mask tokens fill the hidden cells, + sin-cos pos."""
        x = self.decoder_embed(latent)
        n, length, dim = mask.shape[0], mask.shape[1], x.shape[-1]
        full = x.new_zeros(n, length, dim).scatter(1, visible_idx[..., None].expand(-1, -1, dim), x)
        x = torch.where(mask[..., None], self.mask_token.to(x.dtype), full)
        x = x + self.fixed_pos_embed(grid, dim, x)
        for blk in self.decoder_blocks:
            x = self._run(blk, x)
        return self.decoder_pred(self.decoder_norm(x))

    def _unnormalised(self, x: torch.Tensor) -> torch.Tensor:
        """The input mapped back to [0, 1] pixels: x * std + mean per channel."""
        shape = (1, self.in_chans) + (1,) * self.spatial_dims
        return x.float() * self.input_std.view(shape) + self.input_mean.view(shape)

    def _target_statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(patches, mean, scale) of the normalised targets, float32 (the loss is computed in float32 even under
        bf16 / fp16 autocast): ``mae`` patches [N, L, D] with stats over D; ``videomae`` un-normalised patches
        [N, L, P, C] with per-channel stats over P."""
        if self.loss_target == "videomae":
            patches = self.patchify(self._unnormalised(x))
            patches = patches.reshape(*patches.shape[:2], -1, self.in_chans)
            mean = patches.mean(dim=-2, keepdim=True)
            return patches, mean, patches.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6
        patches = self.patchify(x).float()
        return patches, patches.mean(dim=-1, keepdim=True), (patches.var(dim=-1, keepdim=True) + 1e-6) ** 0.5

    def loss_target_patches(self, x: torch.Tensor) -> torch.Tensor:
        """[N, L, patch_dim] float32: what ``pred`` regresses for ``loss_target`` (class docstring)."""
        if self.loss_target == "pixel":
            return self.patchify(x).float()
        patches, mean, scale = self._target_statistics(x)
        return ((patches - mean) / scale).flatten(2)

    @torch.no_grad()
    def pred_to_input(self, pred: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """A prediction [N, L, patch_dim] mapped into the input's (normalised) space, for ``unpatchify``: the
        normalised targets are undone with the statistics of the TRUE patch (as MAE's demo), so a picture shows
        the predicted structure, not an absolute colour the model never had to predict."""
        pred = pred.float()
        if self.loss_target == "pixel":
            return pred
        patches, mean, scale = self._target_statistics(x)
        values = pred.reshape(patches.shape) * scale + mean
        if self.loss_target == "videomae":  # [0, 1] pixels back to the normalised input
            values = (values - self.input_mean) / self.input_std
        return values.flatten(2)

    def forward_loss(self, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the masked patches only, against ``loss_target_patches(x)``."""
        target = self.loss_target_patches(x)
        pred = pred.float()
        per_patch = ((pred - target) ** 2).mean(dim=-1)  # [N, L]
        weight = mask.to(per_patch.dtype)
        return (per_patch * weight).sum() / weight.sum().clamp_min(1.0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
                mask_seeds: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``mask_seeds`` long [N]: sample i's mask is drawn from its own seed (``masking.sample_masks``), else
        from ``generator``; an explicit ``mask`` wins over both."""
        grid = self.token_grid(x.shape)
        if mask is None and mask_seeds is not None:
            mask = sample_masks(self.mask_type, grid, self.mask_ratio, mask_seeds, x.device)
        if mask is None:
            mask = make_mask(self.mask_type, x.shape[0], grid, self.mask_ratio, generator, x.device)
        mask = self._check_mask(mask.to(x.device), x.shape[0], grid)
        enc = self.encode(x, mask)
        pred = self.forward_decoder(enc.latent, mask, enc.visible_idx, grid)
        return {"loss": self.forward_loss(x, pred, mask), "pred": pred, "mask": mask, "latent": enc.latent}


class ConvMAEClassifier(ConvMAEEncoder):
    """Finetuning / linear-probe model: the encoder on all tokens -> mean pool -> ``fc_norm`` -> ``head``.

    ``pos_embed`` defaults to ``learnable`` for images and ``fixed`` for video (see ``__init__``)."""

    def __init__(self, *, num_classes: int = 1000, head_init_std: float = 2e-5, **encoder_kwargs):
        # ConvMAE finetunes images with a learned table (vision_transformer.py ConvViT); VideoMAE finetunes video
        # with a fixed one (modeling_finetune.py, use_learnable_pos_emb=False)
        encoder_kwargs.setdefault("pos_embed", "learnable" if encoder_kwargs.get("spatial_dims", 2) == 2 else "fixed")
        super().__init__(stage_decodes=False, final_norm=False, **encoder_kwargs)
        self.num_classes, self.head_init_std = num_classes, head_init_std
        self.num_features = self.dims[-1]
        self.fc_norm = nn.LayerNorm(self.num_features, eps=TRANSFORMER_NORM_EPS)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights("trunc_normal")
        if num_classes > 0:
            trunc_normal_(self.head.weight, std=head_init_std)  # 2e-5: MAE finetuning's head init

    def forward_features(self, x: torch.Tensor, stages: Sequence[int] | None = None
                         ) -> torch.Tensor | list[torch.Tensor]:
        """[N, C, (T,) H, W] -> [N, C3] mean over all stage-3 tokens, after ``fc_norm`` (what ``head`` takes, as
        timm's ``forward_features`` / ``forward_head``); with ``stages`` the maps E1..E4 (``ConvMAEEncoder``)."""
        if stages is not None:
            return super().forward_features(x, stages)
        return self.fc_norm(self.encode(x).latent.mean(dim=1))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            trunc_normal_(self.head.weight, std=self.head_init_std)
            nn.init.zeros_(self.head.bias)

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm layer-decay groups, as the official ``get_layer_id_for_vit``: embeds, ``pos_embed`` and stages 1-2
        are layer 0,
        ``blocks3.i`` is layer i+1, ``fc_norm`` / ``head`` the last layer. (They are left unmatched on purpose:
        timm puts unmatched names in one final group, whereas its (99999,) suffix would merge them into the
        last block.)"""
        return dict(stem=r"^pos_embed$|^patch_embed|^blocks[12]\.", blocks=[(r"^blocks3\.(\d+)", None)])
