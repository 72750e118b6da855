"""The visible-only path through the convolutional stages (pretraining with a mask).

ConvMAE's official code runs stages 1-2 on every position and zeroes hidden ones inside each block; at a 90%
tube mask most of that work is thrown away. Each stage-1 / stage-2 position lies in exactly one stage-3 cell,
and every op of stages 1-2 except the depthwise conv is either pointwise (LayerNorm, the 1x1 convs, the MLP)
or a non-overlapping conv whose window never crosses a cell (patch embeds, fusion convs). So we keep stages 1-2
as tokens of the visible cells only:

    stage 1: [N, K, 16, C1]  (K visible cells, 4x4 stage-1 positions per cell, row-major (a, b))
    stage 2: [N, K, 4, C2]   (2x2 stage-2 positions per cell)

run every pointwise op and every non-overlapping conv (as a Linear on the flattened window) on them, and give
the depthwise conv a zero-filled dense grid: hidden positions are exactly the zeros that ``keep *`` would have
produced, so its output at visible positions is unchanged. The result equals the dense path up to float
rounding (conv vs. matmul accumulation order); tests/test_models_sparse.py checks loss, predictions and every
parameter gradient. Video cells have one stage-1 time step (the tubelet is folded into the cube embed and
stages 2-3 have temporal stride 1), so 2D and 3D share all of this: only the grid rank differs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from videoconvmae.models.layers import PatchEmbed, channels_first, channels_last

CELL_SUB = (4, 2)  # stage-1 / stage-2 positions per stage-3 cell along each spatial axis


@dataclass
class VisibleStages:
    tokens: torch.Tensor  # [N, K, C3] stage-3 input tokens of the visible cells (embed + linear + pos)
    stage1: torch.Tensor  # [N, K, 16, C1] stage-1 output at the visible cells' positions
    stage2: torch.Tensor  # [N, K, 4, C2] stage-2 output at the visible cells' positions


def _gather_cells(x: torch.Tensor, visible_idx: torch.Tensor) -> torch.Tensor:
    """x: [N, L, ...], visible_idx: [N, K] -> [N, K, ...]."""
    index = visible_idx.reshape(*visible_idx.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return x.gather(1, index)


def _cell_windows(x: torch.Tensor, grid: Sequence[int], sub: int, window: int) -> torch.Tensor:
    """Pixels [N, C, (T,) H, W] -> [N, L, sub*sub, C*(u)*window*window]: the non-overlapping embed windows of
    every cell, flattened in the conv weight's (c, (u,) p, q) order. ``u`` is the remaining temporal extent."""
    if len(grid) == 2:
        return rearrange(x, "n c (h a p) (w b q) -> n (h w) (a b) (c p q)", a=sub, b=sub, p=window, q=window)
    return rearrange(x, "n c (t u) (h a p) (w b q) -> n (t h w) (a b) (c u p q)",
                     t=grid[0], a=sub, b=sub, p=window, q=window)


def _group_windows(tokens: torch.Tensor, sub_out: int) -> torch.Tensor:
    """[N, K, (sub_out*2)^2, C] -> [N, K, sub_out^2, C*2*2]: 2x2 windows of a finer level within each cell,
    flattened as (c, i, j) to match a [C_out, C, (1,) 2, 2] conv weight."""
    return rearrange(tokens, "n k (a i b j) c -> n k (a b) (c i j)", a=sub_out, i=2, b=sub_out, j=2)


def _conv_as_linear(conv: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """A kernel = stride conv applied to its flattened windows [..., C_in * prod(kernel)] -> [..., C_out]."""
    return F.linear(windows, conv.weight.reshape(conv.weight.shape[0], -1), conv.bias)


def _embed(embed: PatchEmbed, windows: torch.Tensor) -> torch.Tensor:
    return embed.act(embed.norm(_conv_as_linear(embed.proj, windows)))


def dense_positions(visible_idx: torch.Tensor, grid: Sequence[int], sub: int) -> torch.Tensor:
    """[N, K] visible stage-3 cells -> [N, K*sub*sub] flat indices of their positions in the dense stage grid
    ``[(T,) H3*sub, W3*sub]``, ordered (cell, a, b) like the token layout."""
    h3, w3 = grid[-2], grid[-1]
    t = visible_idx // (h3 * w3)
    h = (visible_idx // w3) % h3
    w = visible_idx % w3
    a = torch.arange(sub, device=visible_idx.device)
    rows = (h[..., None] * sub + a)[..., :, None]  # [N, K, sub, 1]
    cols = (w[..., None] * sub + a)[..., None, :]  # [N, K, 1, sub]
    width, height = w3 * sub, h3 * sub
    flat = (t[..., None, None] * height + rows) * width + cols
    return flat.reshape(visible_idx.shape[0], -1)


def conv_block_visible(block: nn.Module, x: torch.Tensor, positions: torch.Tensor,
                       dense_shape: Sequence[int]) -> torch.Tensor:
    """``ConvBlock`` on visible tokens x [N, K, S, C]; ``positions`` [N, K*S] index the dense grid
    ``dense_shape`` = (N, (T,) H, W, C) that the depthwise conv sees, zero at every hidden position."""
    n, k, s, c = x.shape
    y = block.conv1(block.norm1(x)).reshape(n, k * s, c)
    index = positions[..., None].expand(-1, -1, c)
    dense = y.new_zeros(n, math.prod(dense_shape[1:-1]), c).scatter(1, index, y)
    dense = channels_last(block.dwconv(channels_first(dense.reshape(dense_shape))))
    y = dense.reshape(n, -1, c).gather(1, index).reshape(n, k, s, c)
    x = x + block.drop_path(block.conv2(y))
    return x + block.drop_path(block.mlp(block.norm2(x)))


def encode_visible_stages(enc: nn.Module, x: torch.Tensor, visible_idx: torch.Tensor,
                          grid: Sequence[int]) -> VisibleStages:
    """Stages 1-2 and the stage-3 embed of ``enc`` (a ConvMAEEncoder) on the visible cells only.

    x: [N, C, (T,) H, W]; visible_idx: [N, K] stage-3 cells, ascending; grid: the stage-3 grid.
    """
    n = x.shape[0]
    lead = tuple(grid[:-2])  # (T3,) for video, () for images
    windows = _gather_cells(_cell_windows(x, grid, CELL_SUB[0], 4), visible_idx)
    h = _embed(enc.patch_embed1, windows)  # [N, K, 16, C1]
    shape1 = (n, *lead, grid[-2] * 4, grid[-1] * 4, h.shape[-1])
    pos1 = dense_positions(visible_idx, grid, 4)
    for blk in enc.blocks1:
        h = enc._run(partial(conv_block_visible, blk, positions=pos1, dense_shape=shape1), h)
    stage1 = h
    h = _embed(enc.patch_embed2, _group_windows(h, 2))  # [N, K, 4, C2]
    shape2 = (n, *lead, grid[-2] * 2, grid[-1] * 2, h.shape[-1])
    pos2 = dense_positions(visible_idx, grid, 2)
    for blk in enc.blocks2:
        h = enc._run(partial(conv_block_visible, blk, positions=pos2, dense_shape=shape2), h)
    stage2 = h
    tokens = _embed(enc.patch_embed3, _group_windows(h, 1))[:, :, 0]  # [N, K, C3]
    tokens = enc.patch_embed4(tokens)
    pos = enc.pos_embed(grid, tokens.shape[-1], tokens)  # [1, L, C3]
    tokens = tokens + _gather_cells(pos.expand(n, -1, -1), visible_idx)
    return VisibleStages(tokens, stage1, stage2)


def fused_visible(enc: nn.Module, stage1: torch.Tensor, stage2: torch.Tensor) -> torch.Tensor:
    """The multi-scale fusion (Eq. 1) on visible cells: stride-4 conv of stage 1 + stride-2 conv of stage 2,
    each a Linear over the cell's window -> [N, K, C3]."""
    s1 = _conv_as_linear(enc.stage1_output_decode, rearrange(stage1, "n k (a b) c -> n k (c a b)", a=4))
    s2 = _conv_as_linear(enc.stage2_output_decode, rearrange(stage2, "n k (a b) c -> n k (c a b)", a=2))
    return s1 + s2
