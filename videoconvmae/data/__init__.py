"""Data layer: decoders, annotation formats, clip sampling, augmentation, synthetic dataset. The public names
import lazily, so importing the config schema (``data.config``) never pulls in decoders or timm."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "open_video": "video", "VideoReader": "video", "BACKENDS": "video", "SKIP_REASONS": "video",
    "UnreadableError": "video", "read_clip": "video",
    "VideoRecord": "records", "load_records": "records", "save_class_names": "records",
    "AnnotationError": "records",
    "build_dataset": "dataset", "collate": "dataset", "SkipStats": "dataset",
    "ClipDataset": "dataset", "read_image": "dataset",
    "build_mixup": "mixup",
    "dense_indices": "sampling", "segment_indices": "sampling",
    "write_synthetic_dataset": "synth",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'videoconvmae.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"videoconvmae.data.{_EXPORTS[name]}"), name)
