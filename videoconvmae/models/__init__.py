"""Model layer: layers, masking, models, registry, checkpoint interop. The public names (``_EXPORTS``) import
lazily, so ``videoconvmae.config`` can import ``models.config`` without loading torch / timm."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "create_model": "videoconvmae.models.registry",
    "list_models": "videoconvmae.models.registry",
    "build_model": "videoconvmae.models.registry",
    "count_params": "videoconvmae.models.registry",
    "load_pretrained": "videoconvmae.models.checkpoint",
    "LoadReport": "videoconvmae.models.checkpoint",
    "ConvMAEPretrain": "videoconvmae.models.convmae",
    "ConvMAEClassifier": "videoconvmae.models.convmae",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'videoconvmae.models' has no attribute {name!r}")
