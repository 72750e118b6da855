"""The visible-cell layout: the convolutional stages on the visible stage-3 cells only (pretraining with a mask).

ConvMAE's official code runs stages 1-2 on every position and zeroes hidden ones inside each block; at a 90% tube
mask most of that work is thrown away. Each stage-1 / stage-2 position lies in exactly one stage-3 cell, and every
op of stages 1-2 except the depthwise conv is either pointwise (LayerNorm, the 1x1 convs, the MLP) or a non-
overlapping conv whose window never crosses a cell (patch embeds, fusion convs). So a level of the encoder is kept
as tokens of the visible cells only (``VisibleCells``):

    pixels:  [N, K, u*16*16, C]  (K visible cells; u = tubelet frames for video, 1 for images)
    stage 1: [N, K, 16, C1]      (4x4 stage-1 positions per cell, row-major (a, b))
    stage 2: [N, K, 4, C2]       (2x2 stage-2 positions per cell)
    stage 3: [N, K, 1, C3]

(the sub-divisions follow ``config.STAGE_STRIDES``). A non-overlapping conv runs as a Linear on the flattened
windows of each cell; the depthwise conv runs on a zero-filled dense grid (``GridDepthwise``) or on visible taps
only (``VisibleDepthwise``), chosen per level. The result equals the dense masked-convolution
reference up to float rounding (conv vs. matmul accumulation order); tests/test_models_sparse.py checks loss,
predictions and every parameter gradient. Video cells have one stage-1 time step (the tubelet is folded into the
cube embed, stages 2-3 have temporal stride 1): 2D and 3D share all of this, only the grid rank differs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from videoconvmae.models.layers import channels_first, channels_last

# Depthwise strategy: gathering taps of visible tokens costs ~5x more per position than oneDNN's dense kernel, so
# it wins only when few positions are visible (measured: 10% visible video 1.6x faster, 25% visible image 7%
# slower). Both strategies are exact; above this visible fraction the zero-filled dense grid is used.
VISIBLE_CONV_MAX_FRACTION = 0.15


def _flat_rows(idx: torch.Tensor, length: int) -> torch.Tensor:
    """[N, K] indices into per-sample rows of length ``length`` -> [N*K] rows of the flattened [N*length, ...]."""
    return (idx + torch.arange(idx.shape[0], device=idx.device)[:, None] * length).reshape(-1)


def _gather_cells(x: torch.Tensor, visible_idx: torch.Tensor) -> torch.Tensor:
    """x: [N, L, ...], visible_idx: [N, K] -> [N, K, ...]. Row-wise ``index_select`` on the flattened tensor:
    a gather with an index expanded to every element moves the same data with C times more index traffic."""
    n, length = x.shape[:2]
    rows = x.reshape(n * length, -1).index_select(0, _flat_rows(visible_idx, length))
    return rows.reshape(n, visible_idx.shape[1], *x.shape[2:])


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


class GridDepthwise:
    """The depthwise conv on a zero-filled dense grid (oneDNN's kernel), read back at the visible positions."""

    def __init__(self, positions: torch.Tensor, dense_grid: Sequence[int]) -> None:
        self.positions, self.dense_grid = positions, tuple(dense_grid)  # positions [N, P] flat into dense_grid

    def __call__(self, dwconv: nn.Module, y: torch.Tensor) -> torch.Tensor:
        """y: [N, P, C] visible tokens -> [N, P, C]."""
        n, p, c = y.shape
        size = math.prod(self.dense_grid)
        rows = _flat_rows(self.positions, size)
        dense = y.new_zeros(n * size, c).index_copy(0, rows, y.reshape(n * p, c)).reshape(n, *self.dense_grid, c)
        dense = channels_last(dwconv(channels_first(dense)))
        return dense.reshape(n * size, c).index_select(0, rows).reshape(n, p, c)


class VisibleDepthwise:
    """The depthwise conv at visible positions only (``VisibleDepthwiseConv``)."""

    def __init__(self, neighbors: torch.Tensor) -> None:
        self.neighbors = neighbors  # [N, P, taps] from ``neighbor_index``

    def __call__(self, dwconv: nn.Module, y: torch.Tensor) -> torch.Tensor:
        """y: [N, P, C] visible tokens -> [N, P, C]."""
        weight = dwconv.weight.reshape(y.shape[-1], -1)
        return VisibleDepthwiseConv.apply(y, self.neighbors, weight, dwconv.bias)


def _group_windows(x: torch.Tensor, sub_out: int, window: int, frames: int = 1) -> torch.Tensor:
    """[N, K, frames*(sub_out*window)^2, C] -> [N, K, sub_out^2, C*frames*window^2]: the non-overlapping windows of
    each cell, flattened as (c, (u,) i, j) to match a [C_out, C, (frames,) window, window] conv weight."""
    return rearrange(x, "n k (u a i b j) c -> n k (a b) (c u i j)", u=frames, a=sub_out, i=window, b=sub_out, j=window)


class VisibleCells:
    """One encoder level in the visible-cell layout: tokens [N, K, frames*sub*sub, C] (module docstring).

    visible_idx: [N, K] stage-3 cells, ascending; grid: the stage-3 grid; sub: positions per cell side at this
    level; frames: time steps per cell at this level (the tubelet for pixels, else 1).
    """

    def __init__(self, visible_idx: torch.Tensor, grid: Sequence[int], sub: int, frames: int = 1) -> None:
        self.visible_idx, self.grid, self.sub, self.frames = visible_idx, tuple(grid), sub, frames
        self._depthwise: GridDepthwise | VisibleDepthwise | None = None

    def from_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, (T,) H, W] -> the visible cells' pixels [N, K, frames*sub*sub, C]."""
        x = x[:, :, None] if x.dim() == 4 else x  # an image is a clip of one frame
        cells = rearrange(x, "n c (t u) (h a) (w b) -> n (t h w) (u a b) c", u=self.frames, a=self.sub, b=self.sub)
        return _gather_cells(cells, self.visible_idx)

    def window_conv(self, conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """A kernel = stride conv (a patch embed or a fusion conv) as a Linear on each cell's flattened windows:
        [N, K, S, C_in] -> [N, K, S / window^2, C_out]."""
        window = conv.kernel_size[-1]
        windows = _group_windows(x, self.sub // window, window, self.frames)
        return F.linear(windows, conv.weight.reshape(conv.weight.shape[0], -1), conv.bias)

    def depthwise(self, dwconv: nn.Module, y: torch.Tensor) -> torch.Tensor:
        """``ConvBlock``'s depthwise conv on y [N, K, S, C]; the strategy is chosen once per level."""
        if self._depthwise is None:
            dense_grid = (*self.grid[:-2], self.grid[-2] * self.sub, self.grid[-1] * self.sub)
            positions = dense_positions(self.visible_idx, self.grid, self.sub)
            if positions.shape[1] <= VISIBLE_CONV_MAX_FRACTION * math.prod(dense_grid):
                self._depthwise = VisibleDepthwise(neighbor_index(positions, dense_grid, dwconv.kernel_size))
            else:
                self._depthwise = GridDepthwise(positions, dense_grid)
        n, k, s, c = y.shape
        return self._depthwise(dwconv, y.reshape(n, k * s, c)).reshape(n, k, s, c)

    def tokens(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        """Stage-3 level [N, K, 1, C] -> the visible tokens [N, K, C], + ``pos`` [1, L, C] at their cells."""
        x = x[:, :, 0]
        if pos is not None:
            x = x + _gather_cells(pos.expand(x.shape[0], -1, -1), self.visible_idx)
        return x
