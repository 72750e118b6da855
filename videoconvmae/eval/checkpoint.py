"""Reading what an evaluation needs from a checkpoint: the weights and the config saved with them.

Accepted: a training checkpoint (``checkpoint-*.pt``), exported ``weights.pt`` (both ``{"model", "config",
...}``), exported ``weights.safetensors`` (the config rides in its metadata) and a bare state dict (an
official checkpoint; the config then comes from the preset). Every ``torch.load`` is ``weights_only``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from videoconvmae.config import ConfigError


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _check_file(path: str) -> None:
    if not path:
        raise ConfigError("eval.checkpoint: no checkpoint given (eval.checkpoint=PATH)")
    if not Path(path).is_file():
        raise ConfigError(f"eval.checkpoint: {path}: no such file")


def saved_config(path: str) -> dict | None:
    """The config dict saved with the weights (None when there is none), without loading every tensor."""
    _check_file(path)
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                text = (f.metadata() or {}).get("config")
            return json.loads(text) if text else None
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated file, pickle that needs code, not a checkpoint at all
        raise ConfigError(f"eval.checkpoint: {path}: cannot be loaded ({_first_line(e)})") from None
    config = ckpt.get("config") if isinstance(ckpt, dict) else None
    return config if isinstance(config, dict) else None


def load_eval_checkpoint(path: str, use_ema: bool = False) -> tuple[dict, dict | None]:
    """(state_dict, saved config dict or None); ``use_ema`` takes the checkpoint's ``ema`` weights."""
    _check_file(path)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            if use_ema:
                raise ConfigError(f"eval.use_ema: {path}: exported weights hold one set of weights, not the EMA")
            return load_file(path), saved_config(path)
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"eval.checkpoint: {path}: cannot be loaded ({_first_line(e)})") from None
    if not isinstance(ckpt, dict):
        raise ConfigError(f"eval.checkpoint: {path}: expected a dict, got {type(ckpt).__name__}")
    key = "ema" if use_ema else "model"
    if key not in ckpt and not use_ema and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt, None  # a bare state dict (e.g. an official checkpoint)
    if not isinstance(ckpt.get(key), dict):
        raise ConfigError(f"eval.checkpoint: {path}: no {key!r} state dict inside (keys: {', '.join(map(str, ckpt))})")
    config = ckpt.get("config")
    return ckpt[key], config if isinstance(config, dict) else None
