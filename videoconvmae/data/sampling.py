"""Which frame indices make a clip.

- Dense sampling (Kinetics): ``num_frames`` frames ``sampling_rate`` apart from a random start in training,
  from the centred start at test time. A video shorter than the clip span (``num_frames * sampling_rate``) is
  PADDED BY REPEATING ITS LAST FRAME: the clip starts at frame 0 and indices past the end are clamped (the
  motion plays once at the intended speed, then holds; looping would invent a jump cut).
- Segment sampling (Something-Something, TSN-style as in VideoMAE): the video is cut into ``num_segments``
  equal segments and one frame is taken per segment, at a random offset in training and the segment centre at
  test. Segments are fractional, so a video with fewer frames than segments simply repeats frames in order.

Indices are frame numbers (presentation order), never timestamps (see data/video.py).
"""

from __future__ import annotations

import random

import numpy as np


def dense_indices(num_video_frames: int, num_frames: int, sampling_rate: int, train: bool,
                  rng: random.Random | None = None, position: float | None = None) -> np.ndarray:
    """int64 [num_frames]. ``position`` in [0, 1] fixes the start (0 first, 1 last possible); default: random
    in training, 0.5 at test."""
    if num_video_frames <= 0:
        raise ValueError("video has no frames")
    span = (num_frames - 1) * sampling_rate + 1
    max_start = max(num_video_frames - span, 0)
    if position is None:
        start = (rng or random).randint(0, max_start) if train else max_start // 2
    else:
        start = int(round(position * max_start))
    return np.minimum(start + np.arange(num_frames) * sampling_rate, num_video_frames - 1)


def segment_indices(num_video_frames: int, num_segments: int, train: bool,
                    rng: random.Random | None = None) -> np.ndarray:
    """int64 [num_segments]: one frame per uniform segment (random offset in training, centre at test)."""
    if num_video_frames <= 0:
        raise ValueError("video has no frames")
    length = num_video_frames / num_segments
    starts = np.arange(num_segments) * length
    if train:
        r = rng or random
        offsets = np.array([r.random() for _ in range(num_segments)]) * length
    else:
        offsets = np.full(num_segments, length / 2)
    return np.minimum(np.floor(starts + offsets).astype(np.int64), num_video_frames - 1)
