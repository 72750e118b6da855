"""Masks on the stage-3 token grid and their upsampling to the convolutional stages.

Convention: ``mask [N, L] bool, True = masked`` over the stage-3 grid, row-major over (h, w) or (t, h, w).

What "block-wise" means in ConvMAE: the official ``random_masking`` (Alpha-VL/ConvMAE, models_convmae.py) draws a
uniform random subset of the *stage-3 tokens* (per-sample argsort of uniform noise, ``len_keep = int(L * (1 -
ratio))``); each stage-3 token is a 16x16-pixel block, and the mask is upsampled x2 / x4 (nearest) to stages 2 / 1.
So "block" = uniform random masking at stage-3 granularity, not BEiT's contiguous rectangles. We do the same:

- ``block``: uniform random over stage-3 cells (images: 16x16 blocks; video: tubelet x 16 x 16 cubes).
- ``random``: the same draw over all cells. For images it is identical to ``block``; for video it is the
  space-time random masking of the ablations. Kept as its own name so configs read as the paper does.
- ``tube``: one spatial random mask per sample, shared by every temporal slice (VideoMAE's tube masking).

How many cells stay visible follows the project each mask comes from, and the two rules differ by rounding:
- ``block`` / ``random`` count like ConvMAE's ``random_masking`` (models_convmae.py): ``int(L * (1 - ratio))``
  cells are KEPT (14x14 at 75%: 49 kept);
- ``tube`` counts like VideoMAE's ``TubeMaskingGenerator`` (masking_generator.py): ``int(ratio * H * W)`` cells
  of each temporal slice are MASKED (14x14 at 90%: 176 masked, 20 visible per slice; keeping ``int(196 * 0.1)``
  would give 19).
Both keep at least one cell (upstream would then crash on an empty visible set).

Every sample hides the same number of cells (a batch of visible tokens stays rectangular). Masks are drawn with
an optional ``torch.Generator`` so a run can be replayed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from videoconvmae.models.config import check_mask


def num_visible(num_cells: int, ratio: float) -> int:
    """Cells kept by a block / random mask: ``int(L * (1 - ratio))``, ConvMAE's ``len_keep``; at least 1."""
    return max(1, int(num_cells * (1 - ratio)))


def num_visible_per_slice(cells_per_slice: int, ratio: float) -> int:
    """Cells kept per temporal slice by a tube mask: ``H*W - int(ratio * H*W)``, VideoMAE's
    ``num_masks_per_frame`` rule; at least 1."""
    return max(1, cells_per_slice - int(ratio * cells_per_slice))


def _random_mask_keeping(n: int, length: int, keep: int, generator: torch.Generator | None,
                         device: torch.device | str) -> torch.Tensor:
    if generator is not None:
        noise = torch.rand(n, length, generator=generator, device=generator.device).to(device)
    else:
        noise = torch.rand(n, length, device=torch.device(device))
    rank = noise.argsort(dim=1).argsort(dim=1)  # rank of each cell's noise; the smallest ones stay visible
    return rank >= keep


def random_mask(n: int, length: int, ratio: float, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """[n, length] bool, True = masked; exactly ``length - num_visible`` masked per row, uniformly at random."""
    return _random_mask_keeping(n, length, num_visible(length, ratio), generator, device)


def tube_mask(n: int, grid: Sequence[int], ratio: float, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """[n, T*H*W] bool: one random spatial mask per sample repeated over all T temporal slices; each slice keeps
    ``num_visible_per_slice(H*W, ratio)`` cells (VideoMAE's count)."""
    t, h, w = grid
    spatial = _random_mask_keeping(n, h * w, num_visible_per_slice(h * w, ratio), generator, device)
    return spatial[:, None, :].expand(n, t, h * w).reshape(n, t * h * w)


def make_mask(mask_type: str, n: int, grid: Sequence[int], ratio: float,
              generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """A mask of ``mask_type`` over the stage-3 ``grid`` ((h, w) or (t, h, w)) -> [n, prod(grid)] bool."""
    check_mask(mask_type, ratio, len(grid))
    if mask_type == "tube":
        return tube_mask(n, grid, ratio, generator, device)
    return random_mask(n, math.prod(grid), ratio, generator, device)


def sample_masks(mask_type: str, grid: Sequence[int], ratio: float, seeds: torch.Tensor,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """[N, prod(grid)] bool, row i drawn from its own generator seeded with ``seeds[i]`` (long [N]).

    Why per sample: a mask drawn from one stream per process depends on how the global batch is split over
    processes; a mask that is a function of the sample's own seed is the same with 1 or N processes.
    """
    rows = [make_mask(mask_type, 1, grid, ratio, torch.Generator().manual_seed(int(s))) for s in seeds.tolist()]
    return (torch.cat(rows) if rows else torch.zeros(0, math.prod(grid), dtype=torch.bool)).to(device)


def upsample_keep(keep: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest upsampling of the last two (spatial) axes by ``factor``: [N, (T,) H, W] -> [N, (T,) H*f, W*f].

    Video stages 2 and 3 embed with temporal stride 1, so the stage-1/2 grids have the stage-3 temporal size
    and only space is upsampled.
    """
    return keep.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def visible_indices(mask: torch.Tensor) -> torch.Tensor:
    """[N, L] bool mask -> [N, L_vis] indices of the visible tokens in ascending order.

    Raises if rows hide different numbers of tokens (the visible batch must be rectangular).
    """
    counts = (~mask).sum(dim=1)
    if mask.shape[0] and not bool((counts == counts[0]).all()):
        raise ValueError(f"mask: every sample must keep the same number of tokens, got {counts.tolist()}")
    num_vis = int(counts[0]) if mask.shape[0] else 0
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)  # visible (0) first, in index order
    return order[:, :num_vis]
