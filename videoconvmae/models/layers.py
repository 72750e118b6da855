"""Dimension-generic building blocks of ConvMAE (``spatial_dims`` 2 = images, 3 = video).

Layout: the convolutional stages keep activations channels-last, ``[N, *grid, C]``. Every pointwise op
(LayerNorm, the 1x1 "convs" conv1 / conv2, the MLP) is a ``nn.Linear`` / ``nn.LayerNorm`` on the last axis, so a
visible-cell layout (models/sparse.py) runs it on gathered visible positions only; only the depthwise conv needs a
grid (it sees a channels-first *view* of the same memory, which PyTorch convolves as channels_last without a copy).
The layouts (``DenseLayout`` here, ``sparse.VisibleCells``): ARCHITECTURE.md, models.
The official checkpoints store the 1x1 convs as ``[C_out, C_in, 1, 1]`` conv weights; ``checkpoint.py``
reshapes them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

# isort: off
from videoconvmae import compat  # noqa: F401  (the torchvision shim must load before timm)
from timm.layers import DropPath, Mlp, trunc_normal_  # noqa: F401  (trunc_normal_ re-exported)
# isort: on

CONV_NORM_EPS = 1e-5  # the official CBlock / PatchEmbed use nn.LayerNorm's default eps
TRANSFORMER_NORM_EPS = 1e-6  # the official transformer blocks and final norms use eps=1e-6


def conv_nd(spatial_dims: int) -> type[nn.Module]:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims: expected 2 (images) or 3 (video), got {spatial_dims}")
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def channels_first(x: torch.Tensor) -> torch.Tensor:
    """[N, *grid, C] -> a channels-first view [N, C, *grid] (no copy)."""
    return x.movedim(-1, 1)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """[N, C, *grid] -> [N, *grid, C]."""
    return x.movedim(1, -1)


def apply_keep(y: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Masked convolution: zero the masked positions before the depthwise conv so they never reach a visible one.

    y: [N, *grid, C]; keep: [N, *grid, 1], 1 = visible. A module-level function so tests can switch it off and
    prove the leak test can fail.
    """
    return y * keep


def depthwise_weight_layout(weight: torch.Tensor) -> torch.Tensor:
    """The depthwise weight ``[C, 1, *kernel]`` with the strides its gradient has (same values and memory).

    The conv sees channels-last activations, so oneDNN returns the weight gradient in channels-last strides:
    ``[25, 1, 5, 1]`` for ``[C, 1, 5, 5]`` where a default tensor has ``[25, 25, 5, 1]``. The two differ only in the
    stride of the size-1 axis (identical memory), but DDP compares strides exactly, copies every such gradient
    into its bucket and warns "Grad strides do not match bucket view strides". A parameter created with the
    gradient's strides makes both agree. ``.to()``, ``load_state_dict``, deepcopy and ``torch.save`` keep them.
    """
    fmt = torch.channels_last if weight.dim() == 4 else torch.channels_last_3d
    return torch.empty_like(weight, memory_format=fmt).copy_(weight)


class DenseLayout:
    """One encoder level at every position: tokens channels-last ``[N, *grid, C]``. ``keep`` [N, *grid, 1] (1 =
    visible) makes the depthwise conv the masked convolution of official ConvMAE: the dense reference the visible-
    cell layout (models/sparse.py) is tested against. ``visible_idx`` [N, K]: the stage-3 tokens kept (None = all).
    """

    def __init__(self, keep: torch.Tensor | None = None, visible_idx: torch.Tensor | None = None) -> None:
        self.keep, self.visible_idx = keep, visible_idx

    def from_pixels(self, x: torch.Tensor) -> torch.Tensor:
        return channels_last(x)

    def window_conv(self, conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return channels_last(conv(channels_first(x)))

    def depthwise(self, dwconv: nn.Module, y: torch.Tensor) -> torch.Tensor:
        if self.keep is not None:
            y = apply_keep(y, self.keep)
        return channels_last(dwconv(channels_first(y)))

    def tokens(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        """Stage-3 level [N, *grid, C] -> [N, L, C] (+ ``pos`` [1, L, C]), then the ``visible_idx`` rows."""
        x = x.flatten(1, -2)
        if pos is not None:
            x = x + pos
        if self.visible_idx is None:
            return x
        return x.gather(1, self.visible_idx[..., None].expand(-1, -1, x.shape[-1]))


EVERY_POSITION = DenseLayout()


class PatchEmbed(nn.Module):
    """Non-overlapping conv (kernel = stride) -> LayerNorm over channels -> GELU (the official ``PatchEmbed``).

    Without ``layout``: channels-first ``[N, C_in, *grid]`` in, channels-last ``[N, *grid / kernel, C_out]`` out;
    with one (``DenseLayout``, ``sparse.VisibleCells``): that layout's tokens in, the next level's out.
    """

    def __init__(self, in_chans: int, embed_dim: int, kernel: Sequence[int], spatial_dims: int = 2):
        super().__init__()
        kernel = tuple(kernel)
        if len(kernel) != spatial_dims:
            raise ValueError(f"PatchEmbed: kernel {kernel} does not have {spatial_dims} dims")
        self.kernel = kernel
        self.proj = conv_nd(spatial_dims)(in_chans, embed_dim, kernel_size=kernel, stride=kernel)
        self.norm = nn.LayerNorm(embed_dim, eps=CONV_NORM_EPS)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor, layout=None) -> torch.Tensor:
        y = channels_last(self.proj(x)) if layout is None else layout.window_conv(self.proj, x)
        return self.act(self.norm(y))


class ConvBlock(nn.Module):
    """The transformer block with attention replaced by a depthwise conv (the official ``CBlock``).

    ``x + drop_path(conv2(dwconv(conv1(norm1(x)))))`` then ``x + drop_path(mlp(norm2(x)))``; the depthwise conv
    runs as ``layout`` says (masked, on a dense grid, at visible positions only). Depthwise kernel 5x5; video:
    ``temporal_kernel`` x 5 x 5. conv1 / conv2 are the official 1x1 convs as Linear.
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0, spatial_dims: int = 2, temporal_kernel: int = 3,
                 drop_path: float = 0.0):
        super().__init__()
        kernel = (5, 5) if spatial_dims == 2 else (temporal_kernel, 5, 5)
        if any(k % 2 == 0 for k in kernel):
            raise ValueError(f"ConvBlock: depthwise kernel {kernel} must be odd (same padding)")
        self.norm1 = nn.LayerNorm(dim, eps=CONV_NORM_EPS)
        self.conv1 = nn.Linear(dim, dim)
        self.dwconv = conv_nd(spatial_dims)(dim, dim, kernel, padding=tuple(k // 2 for k in kernel), groups=dim)
        self.dwconv.weight = nn.Parameter(depthwise_weight_layout(self.dwconv.weight.data))
        self.conv2 = nn.Linear(dim, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=CONV_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, layout=EVERY_POSITION) -> torch.Tensor:
        """x: the tokens of ``layout``: [N, *grid, C] (``DenseLayout``) or [N, K, S, C] (``VisibleCells``)."""
        y = layout.depthwise(self.dwconv, self.conv1(self.norm1(x)))
        x = x + self.drop_path(self.conv2(y))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Attention(nn.Module):
    """Multi-head self-attention with ``F.scaled_dot_product_attention`` (keys ``qkv``, ``proj`` as timm / MAE)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(x.transpose(1, 2).reshape(n, length, dim))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + drop_path(attn(norm1(x)))``, ``x + drop_path(mlp(norm2(x)))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=TRANSFORMER_NORM_EPS)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=TRANSFORMER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


# ---------------------------------------------------------------------------------------------------------------
# Fixed sin-cos position embeddings, computed from the grid (never a stored table of fixed size).


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """[len] positions -> [len, dim] = cat(sin(pos * w), cos(pos * w)), w_k = 10000^(-k / (dim/2)) (as MAE)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding: dim {dim} must be even")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = pos.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid: Sequence[int]) -> torch.Tensor:
    """[H*W, dim], row-major over (h, w): first half encodes the column w, second half the row h.

    This is exactly MAE's ``get_2d_sincos_pos_embed`` (its meshgrid puts w first), so official and ours agree.
    """
    if dim % 4:
        raise ValueError(f"2D sin-cos embedding: dim {dim} must be divisible by 4")
    h, w = grid
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)


def temporal_sincos(dim: int, num_frames: int) -> torch.Tensor:
    """[T, dim] = cat(sin(t w), cos(t w) - 1): the (sin, cos) pair of a 1D embedding shifted to vanish at t = 0."""
    emb = sincos_1d(dim, torch.arange(num_frames))
    emb[:, dim // 2:] -= 1.0
    return emb


def sincos_3d(dim: int, grid: Sequence[int]) -> torch.Tensor:
    """[T*H*W, dim], row-major over (t, h, w): the 2D spatial embedding plus a temporal term.

    Why additive with a term that is exactly zero at t = 0: with T = 1 the space-time embedding IS the 2D one,
    so an image model inflated to video (or a video model fed single frames) sees identical inputs at stage 3,
    and every frame keeps the full spatial code. Subtracting 1 from the cosine half keeps the sin/cos rotation
    structure (a time offset is still a fixed linear map of the embedding, up to a constant) while zeroing t = 0.
    """
    t, h, w = grid
    spatial = sincos_2d(dim, (h, w))
    temporal = temporal_sincos(dim, t)
    return (temporal[:, None, :] + spatial[None, :, :]).reshape(t * h * w, dim)


def sincos_pos_embed(dim: int, grid: Sequence[int]) -> torch.Tensor:
    """[prod(grid), dim] float32 for a 2D (h, w) or 3D (t, h, w) grid."""
    emb = sincos_2d(dim, grid) if len(grid) == 2 else sincos_3d(dim, grid)
    return emb.float()


def resample_pos_embed(table: torch.Tensor, old_grid: Sequence[int], new_grid: Sequence[int]) -> torch.Tensor:
    """A position table [1, prod(old_grid), C] resampled to [1, prod(new_grid), C] ((h, w) or (t, h, w) grids).

    Space: timm's ``resample_abs_pos_embed`` (bicubic, antialiased when shrinking); a video table is resampled
    per temporal slice in one call (the T slices ride along as channels), as VideoMAE's ``run_class_finetuning``
    interpolates each slice. Time, when T differs (our choice: upstream never changes T): linear interpolation.
    """
    from timm.layers import resample_abs_pos_embed

    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if len(old_grid) != len(new_grid) or table.shape[1] != math.prod(old_grid):
        raise ValueError(f"pos_embed: a table of {table.shape[1]} positions does not fit grid {list(old_grid)} "
                         f"-> {list(new_grid)}")
    if old_grid == new_grid:
        return table
    dim = table.shape[-1]
    if len(old_grid) == 2:
        return resample_abs_pos_embed(table, list(new_grid), list(old_grid), num_prefix_tokens=0)
    (t0, h0, w0), (t1, h1, w1) = old_grid, new_grid
    x = table.reshape(t0, h0 * w0, dim).permute(1, 0, 2).reshape(1, h0 * w0, t0 * dim)
    if (h0, w0) != (h1, w1):
        x = resample_abs_pos_embed(x, [h1, w1], [h0, w0], num_prefix_tokens=0)
    x = x.reshape(h1 * w1, t0, dim)  # [HW, T0, C]
    if t0 != t1:
        x = F.interpolate(x.permute(0, 2, 1), size=t1, mode="linear", align_corners=False).permute(0, 2, 1)
    return x.permute(1, 0, 2).reshape(1, t1 * h1 * w1, dim)
