"""The test views of a video (or image): where they sit in time and space (the VideoMAE test protocol, generalised
to T x S), read from one decode, resized, cropped and normalised. Used by eval (T x S views) and visualize (1 x 1).

VideoMAE's test loader decodes a video once per view (15 times for K400 5 x 3); here an item (``ViewsDataset``)
is a whole video: the union of its views' frames is read in one ``get_frames`` call, resized once, and every
T x S view is cut from it. An unreadable file is an item with ``views=None`` and the error, listed, not fatal.

Notation: a video has ``L`` frames of ``H x W`` pixels; the model takes clips of ``c`` frames
(``data.num_frames``) of ``s x s`` pixels (``data.input_size``); ``q`` = ``data.short_side_size``;
``T`` temporal and ``S`` spatial views; ``int`` truncates toward zero and ``round`` sends halves to even,
as Python's (and so upstream's) ``int()`` / ``round()``. Upstream decodes with ``keep_aspect_ratio=True``.

Kinetics (dense sampling, VideoMAE ``kinetics.py`` test mode, stride ``r`` = ``data.sampling_rate``):
    buffer = [0, r, 2r, ..., r * (ceil(L / r) - 1)], padded with its last element to at least c entries
    B = len(buffer) = max(ceil(L / r), c)
    step = max((B - c) / (T - 1), 0)                   (T > 1)
    view k (k = 0..T-1) = buffer[int(k * step) : int(k * step) + c]
  so the T clips are spread uniformly from the first to the last frame. T = 1 has no upstream
  definition (it divides by zero); we take the centred clip, start = int(round((B - c) / 2)).

Something-Something v2 (segment sampling, VideoMAE ``ssv2.py`` test mode, ``n`` = ``data.num_segments``):
    tick = L / n
    view k (k = 0..T-1), frame x (x = 0..n-1) = int(tick * x + tick * k / T)
  For T = 2 this is exactly upstream: it samples ``int(tick * x)`` and ``int(tick / 2 + tick * x)``, sorts
  the union and takes every other entry (``[k::2]``), i.e. the two interleaved samplings k = 0 and k = 1
  (``tick * x <= tick * x + tick / 2 <= tick * (x + 1)`` keeps them interleaved after sorting). For T = 1 it
  is upstream's ``[0::2]`` too; T > 2 generalises the offsets to k / T of a segment.

Space (both datasets; VideoMAE ``video_transforms.Resize`` + the test-mode crop):
    resize so the short side is q:  W < H -> (int(q * H / W), q),  else -> (q, int(q * W / H))
    the long side is the height when H' >= W' (upstream's test, so a square frame counts as tall)
    start_i = int(i * (long' - s) / (S - 1)) along the long side  (i = 0..S-1; upstream has s = q)
    the short side is cut at its centre, int(round((short' - s) / 2)) (0 when s = q, as upstream)
  S = 1 has no upstream definition either (it divides by zero); we take the centre crop,
  int(round((long' - s) / 2)), as VideoMAE's validation ``CenterCrop``.

Resampling to the test size is bilinear without antialiasing (``align_corners=False``) on uint8 frames with a
uint8 result, which is what upstream's ``cv2.resize(..., INTER_LINEAR)`` computes (to within 1 of cv2's
fixed-point rounding); it runs once per decoded frame, before cropping. Normalisation comes last.
Views are ordered temporal-major: view ``v = k * S + i``.

Why not pytorchvideo's functional transforms: none places the views as VideoMAE does (``uniform_crop`` centres
with ceil and treats a square frame as wide, ``uniform_temporal_subsample`` is neither dense nor segment
sampling, ``short_side_scale`` takes float32 frames and rounds the long side differently).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from videoconvmae.data.config import DataConfig
from videoconvmae.data.sampling import clip_sampling
from videoconvmae.data.video import read_clip
from videoconvmae.errors import one_line


def _centred(extent: int) -> int:
    return int(round(extent / 2.0))


def k400_temporal_views(num_video_frames: int, clip_len: int, sampling_rate: int, num_views: int) -> np.ndarray:
    """Frame indices of the ``num_views`` dense clips: ``[num_views, clip_len]`` int64 (see module doc)."""
    if num_video_frames < 1:
        raise ValueError(f"a video with {num_video_frames} frames has no views")
    buffer = list(range(0, num_video_frames, sampling_rate))
    buffer += [buffer[-1]] * max(clip_len - len(buffer), 0)
    extent = len(buffer) - clip_len
    if num_views == 1:
        starts = [_centred(extent)]
    else:
        step = max(1.0 * extent / (num_views - 1), 0)
        starts = [int(k * step) for k in range(num_views)]
    return np.array([buffer[s:s + clip_len] for s in starts], dtype=np.int64)


def ssv2_temporal_views(num_video_frames: int, num_segments: int, num_views: int) -> np.ndarray:
    """Frame indices of the ``num_views`` interleaved segment samplings: ``[num_views, num_segments]``."""
    if num_video_frames < 1:
        raise ValueError(f"a video with {num_video_frames} frames has no views")
    tick = num_video_frames / float(num_segments)
    return np.array([[int(tick * x + tick * k / num_views) for x in range(num_segments)]
                     for k in range(num_views)], dtype=np.int64)


def resized_hw(height: int, width: int, short_side: int) -> tuple[int, int]:
    """Frame size after resizing the short side to ``short_side`` (aspect kept, long side truncated)."""
    if width < height:
        return int(short_side * height / width), short_side
    return short_side, int(short_side * width / height)


def spatial_crop_origins(height: int, width: int, crop: int, num_views: int) -> list[tuple[int, int]]:
    """``(top, left)`` of the ``num_views`` square crops of side ``crop`` in an already resized frame."""
    if crop > min(height, width):
        raise ValueError(f"crop {crop} does not fit in a {height}x{width} frame (data.short_side_size < input_size?)")
    tall = height >= width
    long_side, short_side = (height, width) if tall else (width, height)
    if num_views == 1:
        along = [_centred(long_side - crop)]
    else:
        step = 1.0 * (long_side - crop) / (num_views - 1)
        along = [int(i * step) for i in range(num_views)]
    across = _centred(short_side - crop)
    return [(a, across) if tall else (across, a) for a in along]


@dataclass(frozen=True)
class ViewPlan:
    """All views of one video: which frames, resized to what, cropped where."""

    frame_indices: np.ndarray  # [T, clip_len] source frame index of every temporal view
    resized: tuple[int, int]  # (H', W') every frame is resized to before cropping
    crop_origins: tuple[tuple[int, int], ...]  # (top, left) of every spatial view, in the resized frame
    crop: int  # side of the square crop
    fps: float = 0.0  # the video's frame rate as its reader reports it (0 = unknown)

    @property
    def num_views(self) -> int:
        return len(self.frame_indices) * len(self.crop_origins)


def temporal_views(sampling: str, num_video_frames: int, *, clip_len: int, sampling_rate: int, num_segments: int,
                   num_views: int) -> np.ndarray:
    """Frame indices ``[T, frames per clip]`` of the temporal views (``sampling`` dense: K400's views, segment:
    SSV2's)."""
    if sampling == "segment":
        return ssv2_temporal_views(num_video_frames, num_segments, num_views)
    return k400_temporal_views(num_video_frames, clip_len, sampling_rate, num_views)


def plan_video_views(frame_indices: np.ndarray, height: int, width: int, *, short_side: int, crop: int,
                     num_spatial: int) -> ViewPlan:
    """The T x S views: the temporal views ``frame_indices`` of ``height x width`` frames, S crops each."""
    size = resized_hw(height, width, short_side)
    return ViewPlan(frame_indices, size, tuple(spatial_crop_origins(*size, crop, num_spatial)), crop)


def resize_frames(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of uint8 ``[N, 3, H, W]`` to ``size``, no antialias, rounded back to uint8.

    Upstream resizes uint8 frames with ``cv2.resize(INTER_LINEAR)`` and gets uint8 back; torch's uint8 bilinear
    kernel computes the same interpolation (within 1 of cv2's fixed-point rounding) and is ~5x faster than
    resizing in float.
    """
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    return F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=False)


def cut_views(frames: np.ndarray, frame_ids: np.ndarray, plan: ViewPlan) -> torch.Tensor:
    """Every view of ``plan`` from one decode, still uint8 (normalised later, on the model's device).

    frames: uint8 ``[U, H, W, 3]``, the decoded frames ``frame_ids`` (sorted, distinct, a superset of the
    views' frames). Returns uint8 ``[T * S, 3, clip_len, crop, crop]``, temporal-major.
    """
    x = resize_frames(torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2), plan.resized)
    rows = torch.from_numpy(np.searchsorted(frame_ids, plan.frame_indices))  # [T, clip_len]
    c = plan.crop
    views = []
    for t_rows in rows:
        clip = x.index_select(0, t_rows)  # [clip_len, 3, H', W']
        for top, left in plan.crop_origins:
            views.append(clip[:, :, top:top + c, left:left + c].permute(1, 0, 2, 3))
    return torch.stack(views)


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

    @classmethod
    def of(cls, d: DataConfig, mode: str, num_temporal: int = 1, num_spatial: int = 1,
           image_interpolation: str = "bicubic") -> ViewSpec:
        """The views of ``d`` with the clip sampling of ``mode`` (data/sampling.py)."""
        sampling = clip_sampling(d, mode) if d.dataset != "imagefolder" else None
        return cls(dataset=d.dataset, sampling=sampling.kind if sampling else "dense",
                   clip_len=sampling.num_frames if sampling else 1,
                   sampling_rate=sampling.sampling_rate if sampling else 1,
                   num_segments=sampling.num_frames if sampling else 1, short_side=d.short_side_size,
                   crop=d.input_size, num_temporal=num_temporal, num_spatial=num_spatial, mean=tuple(d.mean),
                   std=tuple(d.std), decoder=d.decoder, decode_timeout_s=d.decode_timeout_s,
                   image_interpolation=image_interpolation)


def decode_video_views(path: str, spec: ViewSpec) -> tuple[torch.Tensor, ViewPlan]:
    """All T x S views of the video at ``path`` from one open and one ``get_frames`` call (under one time limit)."""
    chosen: dict[str, np.ndarray] = {}

    def choose(num_frames: int, fps: float) -> list[int]:
        chosen["fps"] = fps
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
    plan = dataclasses.replace(plan, fps=float(chosen["fps"] or 0.0))
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
            return {"position": position, "views": None, "error": one_line(e, with_type=True)}

