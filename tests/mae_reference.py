"""MAE's reference 2D sin-cos position embedding (numpy, as facebookresearch/mae's get_2d_sincos_pos_embed),
generalised to gh x gw: the independent oracle our layers and checkpoint tests compare against."""

import numpy as np


def mae_2d_sincos_numpy(dim: int, gh: int, gw: int) -> np.ndarray:
    """[gh*gw, dim] float64; meshgrid puts w first, so the first half encodes the column."""
    grid = np.stack(np.meshgrid(np.arange(gw, dtype=np.float32), np.arange(gh, dtype=np.float32)), axis=0)

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)
