"""Which frame indices make a clip.

- Dense sampling (Kinetics): ``num_frames`` frames ``sampling_rate`` apart from a random start in training,
  from the centred start at test time. A video shorter than the clip span (``num_frames * sampling_rate``) is
  PADDED BY REPEATING ITS LAST FRAME: the clip starts at frame 0 and indices past the end are clamped (the
  motion plays once at the intended speed, then holds; looping would invent a jump cut).
- Segment sampling (Something-Something, TSN-style as in VideoMAE): the video is cut into ``num_segments``
  equal segments and one frame is taken per segment, at a random offset in training and the segment centre at
  test. Segments are fractional, so a video with fewer frames than segments simply repeats frames in order.

Which one a run uses (``clip_sampling``) follows VideoMAE: Kinetics always dense (16x4); Something-Something
PRETRAINS dense 16x2 (datasets.py ``build_pretraining_dataset`` reads every dataset through kinetics.py's
``VideoMAE`` loader with ``new_step = --sampling_rate``, 2 in scripts/ssv2/*/pretrain.sh) and finetunes /
evaluates with segment sampling (ssv2.py ``SSVideoClsDataset``, ``num_segment = --num_frames``).
``data.sampling`` overrides the choice; a sampling key the chosen kind does not read is an error.

Indices are frame numbers (presentation order), never timestamps (see data/video.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from videoconvmae.data.config import DataConfig
from videoconvmae.errors import ConfigError

SAMPLINGS = ("dense", "segment")
DEFAULT_SAMPLING_RATE = {"k400": 4, "ssv2": 2}  # VideoMAE's K400 16x4 and SSV2 pretraining 16x2


@dataclass(frozen=True)
class ClipSampling:
    kind: str  # dense | segment
    num_frames: int  # frames per clip: num_frames (dense) or the segment count (segment)
    sampling_rate: int  # dense: frames between samples (1 for segment sampling, where it is not read)


def clip_sampling(cfg: DataConfig, mode: str) -> ClipSampling:
    """The sampling a ``mode`` (pretrain | finetune | linprobe | eval) run uses on ``cfg.dataset``; one line
    naming the key when a key is set that this sampling never reads."""
    kind = cfg.sampling or ("segment" if cfg.dataset == "ssv2" and mode != "pretrain" else "dense")
    if kind not in SAMPLINGS:
        raise ConfigError(f"data.sampling: expected dense | segment, got {kind!r}")
    why = f"data.sampling={cfg.sampling}" if cfg.sampling else f"{cfg.dataset} {mode} samples {kind}"
    if kind == "segment":
        if cfg.sampling_rate is not None:
            raise ConfigError(f"data.sampling_rate={cfg.sampling_rate} is not read: {why} (segments, one frame each)"
                              "; remove it, or set data.sampling=dense")
        return ClipSampling("segment", cfg.num_segments or cfg.num_frames, 1)
    if cfg.num_segments is not None:
        raise ConfigError(f"data.num_segments={cfg.num_segments} is not read: {why} (num_frames x sampling_rate)"
                          "; remove it, or set data.sampling=segment")
    rate = cfg.sampling_rate if cfg.sampling_rate is not None else DEFAULT_SAMPLING_RATE.get(cfg.dataset, 4)
    return ClipSampling("dense", cfg.num_frames, rate)


def clip_indices(sampling: ClipSampling, num_video_frames: int, train: bool,
                 rng: random.Random | None = None) -> np.ndarray:
    """int64 [sampling.num_frames]: the frames of one training (random) or test (centred) clip."""
    if sampling.kind == "segment":
        return segment_indices(num_video_frames, sampling.num_frames, train, rng)
    return dense_indices(num_video_frames, sampling.num_frames, sampling.sampling_rate, train, rng)


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


def model_input_shape(cfg: DataConfig, mode: str) -> tuple[int, ...]:
    """The input a model of this run sees, in pixels: (S, S) for images, (T, S, S) for clips."""
    size = cfg.input_size
    if cfg.dataset == "imagefolder":
        return (size, size)
    return (clip_sampling(cfg, mode).num_frames, size, size)
