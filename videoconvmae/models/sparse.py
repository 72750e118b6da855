"""The visible-only path through the convolutional stages (pretraining with a mask).

ConvMAE's official code runs stages 1-2 on every position and zeroes hidden ones inside each block; at a 90% tube
mask most of that work is thrown away. Each stage-1 / stage-2 position lies in exactly one stage-3 cell, and every
op of stages 1-2 except the depthwise conv is either pointwise (LayerNorm, the 1x1 convs, the MLP) or a non-
overlapping conv whose window never crosses a cell (patch embeds, fusion convs). So we keep stages 1-2 as tokens of
the visible cells only:

    stage 1: [N, K, 16, C1]  (K visible cells, 4x4 stage-1 positions per cell, row-major (a, b))
    stage 2: [N, K, 4, C2]   (2x2 stage-2 positions per cell)

run every pointwise op and every non-overlapping conv (as a Linear on the flattened window) on them. The depthwise
conv either runs on a zero-filled dense grid (hidden positions are exactly the zeros ``keep *`` makes) or, when few
positions are visible, at visible positions only, reading visible inputs only (``VisibleDepthwiseConv``, no dense
grid at all). Either way nothing changes at visible positions. The result equals the dense path up to float
rounding (conv vs. matmul accumulation order); tests/test_models_sparse.py checks loss, predictions and every
parameter gradient. Video cells have one stage-1 time step (the tubelet is folded into the cube embed and stages
2-3 have temporal stride 1), so 2D and 3D share all of this: only the grid rank differs.
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
# Depthwise strategy: gathering taps of visible tokens costs ~5x more per position than oneDNN's dense kernel, so
# it wins only when few positions are visible (measured: 10% visible video 1.6x faster, 25% visible image 7%
# slower). Both strategies are exact; above this visible fraction the zero-filled dense grid is used.
VISIBLE_CONV_MAX_FRACTION = 0.15


@dataclass
class VisibleStages:
    tokens: torch.Tensor  # [N, K, C3] stage-3 input tokens of the visible cells (embed + linear + pos)
    stage1: torch.Tensor  # [N, K, 16, C1] stage-1 output at the visible cells' positions
    stage2: torch.Tensor  # [N, K, 4, C2] stage-2 output at the visible cells' positions


def _flat_rows(idx: torch.Tensor, length: int) -> torch.Tensor:
    """[N, K] indices into per-sample rows of length ``length`` -> [N*K] rows of the flattened [N*length, ...]."""
    return (idx + torch.arange(idx.shape[0], device=idx.device)[:, None] * length).reshape(-1)


def _gather_cells(x: torch.Tensor, visible_idx: torch.Tensor) -> torch.Tensor:
    """x: [N, L, ...], visible_idx: [N, K] -> [N, K, ...]. Row-wise ``index_select`` on the flattened tensor:
    a gather with an index expanded to every element moves the same data with C times more index traffic."""
    n, length = x.shape[:2]
    rows = x.reshape(n * length, -1).index_select(0, _flat_rows(visible_idx, length))
    return rows.reshape(n, visible_idx.shape[1], *x.shape[2:])


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


def neighbor_index(positions: torch.Tensor, dense_grid: Sequence[int], kernel: Sequence[int]) -> torch.Tensor:
    """For every visible position and every tap of a same-padded ``kernel``, the index of the input it reads in
    the visible token list, or P (a zero row) where that input is hidden or outside the grid.

    positions: [N, P] flat indices into ``dense_grid`` ((H, W) or (T, H, W)) -> [N, P, prod(kernel)] int64,
    taps in the conv weight's row-major kernel order.
    """
    n, p = positions.shape
    dense_grid = tuple(dense_grid)
    size = math.prod(dense_grid)
    inverse = positions.new_full((n, size), p)  # dense position -> token index (P = hidden)
    inverse.scatter_(1, positions, torch.arange(p, device=positions.device).expand(n, p))
    coords = torch.stack(torch.unravel_index(positions, dense_grid), dim=-1)  # [N, P, D]
    offsets = torch.cartesian_prod(*[torch.arange(k, device=positions.device) - k // 2 for k in kernel])
    offsets = offsets.reshape(-1, len(kernel))  # [taps, D]
    neighbors = coords[:, :, None, :] + offsets  # [N, P, taps, D]
    extent = torch.tensor(dense_grid, device=positions.device)
    inside = ((neighbors >= 0) & (neighbors < extent)).all(dim=-1)
    flat = torch.zeros_like(neighbors[..., 0])
    for axis, length in enumerate(dense_grid):
        flat = flat * length + neighbors[..., axis].clamp(0, length - 1)
    found = inverse.gather(1, flat.reshape(n, -1)).reshape(n, p, -1)
    return torch.where(inside, found, p)


class VisibleDepthwiseConv(torch.autograd.Function):
    """Depthwise conv evaluated at visible positions only, reading visible inputs only (hidden ones are zero).

    Why our own: the masked conv needs a dense zero-filled grid, and the CPU backward of a 3D depthwise conv is
    slow (seconds for one stage-1 block of a 16-frame clip); at a 90% mask nine tenths of that grid is zeros.
    Here each tap is an ``index_select`` of the visible tokens; nothing dense is built or saved, and backward
    recomputes the selections instead of storing them.
    x: [N, P, C] visible tokens; index: [N, P, taps] from ``neighbor_index``; weight: [C, taps]; bias: [C].
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        n, p, c = x.shape
        flat_x = torch.cat([x, x.new_zeros(n, 1, c)], dim=1).reshape(n * (p + 1), c)
        # tap-major and contiguous: each tap's index row and weight row are one dense vector
        flat_index = (index + torch.arange(n, device=x.device)[:, None, None] * (p + 1)).reshape(n * p, -1)
        flat_index = flat_index.t().contiguous()  # [taps, N*P]
        weight = weight.to(x.dtype).t().contiguous()  # [taps, C]
        out = bias.to(x.dtype).expand(n * p, c).clone() if bias is not None else x.new_zeros(n * p, c)
        for tap in range(flat_index.shape[0]):
            out.addcmul_(flat_x.index_select(0, flat_index[tap]), weight[tap])
        ctx.save_for_backward(flat_x, flat_index, weight)
        ctx.has_bias, ctx.shape = bias is not None, (n, p, c)
        return out.reshape(n, p, c)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        flat_x, flat_index, weight = ctx.saved_tensors
        n, p, c = ctx.shape
        grad = grad_out.reshape(n * p, c)
        grad_x = torch.zeros_like(flat_x) if ctx.needs_input_grad[0] else None
        grad_w = torch.empty_like(weight) if ctx.needs_input_grad[2] else None  # [taps, C]
        for tap in range(flat_index.shape[0]):
            if grad_w is not None:
                grad_w[tap] = (grad * flat_x.index_select(0, flat_index[tap])).sum(dim=0)
            if grad_x is not None:
                grad_x.index_add_(0, flat_index[tap], grad * weight[tap])
        if grad_x is not None:
            grad_x = grad_x.reshape(n, p + 1, c)[:, :p]
        if grad_w is not None:
            grad_w = grad_w.t()
        grad_b = grad.sum(dim=0) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return grad_x, None, grad_w, grad_b


def depthwise_on_grid(dwconv: nn.Module, y: torch.Tensor, positions: torch.Tensor,
                      dense_grid: Sequence[int]) -> torch.Tensor:
    """The depthwise conv on a zero-filled dense grid (oneDNN's kernel), read back at the visible positions.
    y: [N, P, C] visible tokens at flat ``positions`` [N, P] of ``dense_grid``."""
    n, p, c = y.shape
    size = math.prod(dense_grid)
    rows = _flat_rows(positions, size)
    dense = y.new_zeros(n * size, c).index_copy(0, rows, y.reshape(n * p, c)).reshape(n, *dense_grid, c)
    dense = channels_last(dwconv(channels_first(dense)))
    return dense.reshape(n * size, c).index_select(0, rows).reshape(n, p, c)


def depthwise_visible(dwconv: nn.Module, y: torch.Tensor, neighbors: torch.Tensor) -> torch.Tensor:
    """The depthwise conv at visible positions only; y: [N, P, C], neighbors: [N, P, taps]."""
    weight = dwconv.weight.reshape(y.shape[-1], -1)
    return VisibleDepthwiseConv.apply(y, neighbors, weight, dwconv.bias)


def conv_block_visible(block: nn.Module, x: torch.Tensor, depthwise) -> torch.Tensor:
    """``ConvBlock`` on visible tokens x [N, K, S, C]; ``depthwise`` maps [N, K*S, C] -> [N, K*S, C]."""
    n, k, s, c = x.shape
    y = depthwise(block.dwconv, block.conv1(block.norm1(x)).reshape(n, k * s, c)).reshape(n, k, s, c)
    x = x + block.drop_path(block.conv2(y))
    return x + block.drop_path(block.mlp(block.norm2(x)))


def _visible_blocks(enc: nn.Module, blocks: nn.ModuleList, h: torch.Tensor, visible_idx: torch.Tensor,
                    grid: Sequence[int], sub: int) -> torch.Tensor:
    """The conv blocks of one stage on visible tokens h [N, K, sub*sub, C]."""
    if not len(blocks):
        return h
    dense_grid = (*grid[:-2], grid[-2] * sub, grid[-1] * sub)
    positions = dense_positions(visible_idx, grid, sub)
    if positions.shape[1] <= VISIBLE_CONV_MAX_FRACTION * math.prod(dense_grid):
        neighbors = neighbor_index(positions, dense_grid, blocks[0].dwconv.kernel_size)
        depthwise = partial(depthwise_visible, neighbors=neighbors)
    else:
        depthwise = partial(depthwise_on_grid, positions=positions, dense_grid=dense_grid)
    for blk in blocks:
        h = enc._run(partial(conv_block_visible, blk, depthwise=depthwise), h)
    return h


def encode_visible_stages(enc: nn.Module, x: torch.Tensor, visible_idx: torch.Tensor,
                          grid: Sequence[int]) -> VisibleStages:
    """Stages 1-2 and the stage-3 embed of ``enc`` (a ConvMAEEncoder) on the visible cells only.

    x: [N, C, (T,) H, W]; visible_idx: [N, K] stage-3 cells, ascending; grid: the stage-3 grid.
    """
    n = x.shape[0]
    sub1, sub2 = CELL_SUB
    windows = _gather_cells(_cell_windows(x, grid, sub1, 4), visible_idx)  # 4x4-pixel stage-1 embed windows
    stage1 = _visible_blocks(enc, enc.blocks1, _embed(enc.patch_embed1, windows), visible_idx, grid, sub1)
    h = _embed(enc.patch_embed2, _group_windows(stage1, sub2))  # [N, K, 4, C2]
    stage2 = _visible_blocks(enc, enc.blocks2, h, visible_idx, grid, sub2)
    tokens = _embed(enc.patch_embed3, _group_windows(stage2, 1))[:, :, 0]  # [N, K, C3]
    tokens = enc.patch_embed4(tokens)
    pos = enc.encoder_pos_embed(grid, tokens)  # [1, L, C3]
    tokens = tokens + _gather_cells(pos.expand(n, -1, -1), visible_idx)
    return VisibleStages(tokens, stage1, stage2)


def fused_visible(enc: nn.Module, stage1: torch.Tensor, stage2: torch.Tensor) -> torch.Tensor:
    """The multi-scale fusion (Eq. 1) on visible cells: stride-4 conv of stage 1 + stride-2 conv of stage 2,
    each a Linear over the cell's window -> [N, K, C3]."""
    s1 = _conv_as_linear(enc.stage1_output_decode, rearrange(stage1, "n k (a b) c -> n k (c a b)", a=4))
    s2 = _conv_as_linear(enc.stage2_output_decode, rearrange(stage2, "n k (a b) c -> n k (c a b)", a=2))
    return s1 + s2
