"""Evaluation items: ALL views of one video (or image) from ONE decode.

VideoMAE's test loader re-opens and decodes a video once per view (15 times for K400 5 x 3); here an item is
a whole video: the union of the frames of its T temporal views is read in one ``get_frames`` call (one
``open_video``, under ``data.decode_timeout_s``), resized
once, and every T x S view is cut from it (see ``views.py`` for where the views sit). An unreadable file
becomes an item with ``views=None`` and the error, so the caller can list and count it instead of crashing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from videoconvmae.data.video import read_clip
from videoconvmae.eval.views import (
    ViewPlan,
    cut_views,
    plan_video_views,
    resized_hw,
    spatial_crop_origins,
    temporal_views,
)


@dataclass(frozen=True)
class ViewSpec:
    """How to place the views; filled from ``data.*`` and ``eval.*`` (see ``multiview.view_spec``)."""

    dataset: str  # k400 | ssv2 | imagefolder
    sampling: str  # dense | segment (data.sampling as resolved for eval, data/sampling.py)
    clip_len: int  # data.num_frames
    sampling_rate: int  # data.sampling_rate (k400)
    num_segments: int  # data.num_segments (ssv2)
    short_side: int  # data.short_side_size
    crop: int  # data.input_size
    num_temporal: int
    num_spatial: int
    mean: tuple[float, ...]  # normalisation, applied by the consumer (views stay uint8 until the device)
    std: tuple[float, ...]
    decoder: str = "decord"
    decode_timeout_s: float = 0.0  # 0 = no limit
    image_interpolation: str = "bicubic"


def _error_text(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}".strip()


def decode_video_views(path: str, spec: ViewSpec) -> tuple[torch.Tensor, ViewPlan]:
    """All T x S views of the video at ``path`` from one open and one ``get_frames`` call (under one time limit)."""
    chosen: dict[str, np.ndarray] = {}

    def choose(num_frames: int, fps: float) -> list[int]:
        chosen["views"] = temporal_views(spec.sampling, num_frames, clip_len=spec.clip_len,
                                         sampling_rate=spec.sampling_rate, num_segments=spec.num_segments,
                                         num_views=spec.num_temporal)
        chosen["union"] = np.unique(chosen["views"])
        return chosen["union"].tolist()

    frames = np.asarray(read_clip(path, spec.decoder, choose, spec.decode_timeout_s))
    if frames.ndim != 4 or len(frames) != len(chosen["union"]):
        raise ValueError(f"decoder returned frames of shape {frames.shape} for {len(chosen['union'])} indices")
    # The frame size is known only once decoded (the reader does not expose it): plan space now.
    plan = plan_video_views(chosen["views"], frames.shape[1], frames.shape[2], short_side=spec.short_side,
                            crop=spec.crop, num_spatial=spec.num_spatial)
    return cut_views(frames, chosen["union"], plan), plan


def load_image_views(path: str, spec: ViewSpec) -> torch.Tensor:
    """The S crops of one image: short side resized with PIL (antialiased), uint8 ``[S, 3, crop, crop]``."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        h, w = resized_hw(im.height, im.width, spec.short_side)
        resample = Image.Resampling.BICUBIC if spec.image_interpolation == "bicubic" else Image.Resampling.BILINEAR
        arr = np.asarray(im.resize((w, h), resample), dtype=np.uint8)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    c = spec.crop
    origins = spatial_crop_origins(h, w, c, spec.num_spatial)
    return torch.stack([x[:, top:top + c, left:left + c] for top, left in origins])


class ViewsDataset(Dataset):
    """Item i: ``{"position", "views" uint8 [V, 3, ...] | None, "error" | None}`` for ``records[i]``."""

    def __init__(self, records: list, positions: list[int], spec: ViewSpec):
        self.records, self.positions, self.spec = records, positions, spec

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        position = self.positions[i]
        record = self.records[position]
        try:
            if self.spec.dataset == "imagefolder":
                views = load_image_views(record.path, self.spec)
            else:
                views, _ = decode_video_views(record.path, self.spec)
            return {"position": position, "views": views, "error": None}
        except Exception as e:  # any decoder failure (decord's DECORDError is not a RuntimeError)
            return {"position": position, "views": None, "error": _error_text(e)}


def collate_items(items: list[dict]) -> list[dict]:
    """Keep items as a list: views of one video stay together, unreadable items ride along."""
    return items
