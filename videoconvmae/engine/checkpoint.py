"""The artifacts of a run: resumable training checkpoints, exported weights, and ``load_task_model``, the one way
eval, ``features`` and ``visualize`` turn any weight file into a ready model.

Files are written and read through ``videoconvmae.artifacts`` (atomic, fsync'ed; ``weights_only``). Everything
in a checkpoint is a tensor or a plain Python value so ``torch.load(weights_only=True)`` reads it (numpy RNG
state is converted to a tensor for that reason).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save as safetensors_bytes

from videoconvmae.artifacts import atomic_write, atomic_write_all, read_artifact
from videoconvmae.errors import ConfigError, one_line
from videoconvmae.models.checkpoint import read_state_dict
from videoconvmae.models.config import ModelConfig

CKPT_PATTERN = re.compile(r"checkpoint-(\d+)\.pt$")
REQUIRED_KEYS = ("model", "optimizer", "step", "epoch", "epoch_position", "rng", "config", "code_version")


def checkpoint_path(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step:08d}.pt"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f))


# ---------------------------------------------------------------------------------------------- RNG state
def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict:
    """python, numpy, torch (CPU + CUDA) and named generators, as tensors / plain values."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss),
                  float(np_gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }
    return state


def set_rng_state(state: dict, generators: dict[str, torch.Generator] | None = None) -> None:
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, keys, pos, has_gauss, np_gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for key, g in (generators or {}).items():
        if key in state.get("generators", {}):
            g.set_state(state["generators"][key])


# ---------------------------------------------------------------------------------------------- finding / loading
def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a training checkpoint (``weights_only=True``) and check it has the full state."""
    ckpt = read_artifact(path, "train.resume")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: not a training checkpoint (missing {', '.join(missing)})")
    return ckpt


def list_checkpoints(output_dir: str | os.PathLike, pattern: re.Pattern = CKPT_PATTERN) -> list[Path]:
    """Checkpoints in ``output_dir`` whose name matches ``pattern`` (step in group 1), newest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.fullmatch(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def first_loadable(paths: list[Path], load: Callable[[Path], Any]) -> tuple[Path, Any] | None:
    """``(path, load(path))`` for the first path that loads; a damaged one is skipped with a warning."""
    for path in paths:
        try:
            return path, load(path)
        except Exception as e:  # noqa: BLE001 - any unreadable file: truncated zip, wrong content, ...
            warnings.warn(f"skipping damaged checkpoint {path}: {one_line(e, with_type=True)}", stacklevel=3)
    return None


def find_resume(output_dir: str | os.PathLike) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads; a damaged one is skipped with a warning."""
    return first_loadable(list_checkpoints(output_dir), load_checkpoint)


def checkpoint_step(path: str | os.PathLike) -> int:
    m = CKPT_PATTERN.fullmatch(Path(path).name)
    if m is None:
        raise ValueError(f"{path}: not a checkpoint-<step>.pt name")
    return int(m.group(1))


def prune_checkpoints(own: list[Path], keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` highest steps of ``own`` and return those kept.

    ``own`` is this run's valid checkpoints (the one it resumed from, those before it, those it wrote): a
    damaged file or another run's checkpoint in the folder is never a candidate, so it can neither push this
    run's checkpoints out nor be deleted by it.
    """
    ranked = sorted(set(own), key=checkpoint_step, reverse=True)
    for old in ranked[keep_last:]:
        old.unlink(missing_ok=True)
    return ranked[:keep_last]


# ---------------------------------------------------------------------------------------------- exported weights
def export_weights(state_dict: dict[str, torch.Tensor], config: dict, output_dir: str | os.PathLike,
                   stem: str = "weights") -> tuple[Path, Path]:
    """``weights.pt`` (``{"model", "config"}``, weights_only-loadable) and ``weights.safetensors``."""
    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    # safetensors refuses tensors that share storage; clones make each one its own.
    data = safetensors_bytes({k: v.clone() for k, v in state.items()}, metadata={"config": json.dumps(config)})
    out = Path(output_dir)
    pt, st = atomic_write_all([(out / f"{stem}.pt", lambda f: torch.save({"model": state, "config": config}, f)),
                               (out / f"{stem}.safetensors", lambda f: f.write(data))])
    return pt, st


# ---------------------------------------------------------------------------------------------- ready models
def load_task_model(path: str | os.PathLike, model_cfg: ModelConfig, task: str, *, num_classes: int = 0,
                    input_shape: tuple[int, ...] | None = None,
                    input_norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None, use_ema: bool = False,
                    key: str = "eval.checkpoint") -> nn.Module:
    """The ``model_cfg`` model in eval mode holding every weight of ``path``: any weight file (a training
    ``checkpoint-*.pt`` of any task, ``weights.pt``, ``.safetensors``, an official ConvMAE checkpoint).

    ``task="pretrain"``: the pretrain model (``visualize``). Otherwise a classifier with ``num_classes`` outputs,
    or, for ``num_classes=0``, the encoder without a head (``features``: a pretrain checkpoint's encoder; its
    ``fc_norm`` may be missing). A linear probe's training checkpoint (head BatchNorm + Linear: ``head.0.*`` /
    ``head.1.*``) gets the probe's head; a checkpoint without a head for a classifier is one line. Weights that
    do not fit are one ConfigError line naming ``key``.
    """
    from videoconvmae.models import build_model, load_pretrained

    state = read_state_dict(path, key, use_ema)
    model_cfg = dataclasses.replace(model_cfg, pretrained="")  # every weight comes from ``path``
    classifier = task != "pretrain"
    if classifier and num_classes > 0 and not any(k.startswith("head.") for k in state):
        raise ConfigError(f"{key}: {path} has no classifier (a pretrain checkpoint?): finetune or linprobe it "
                          "first, or embed with `videoconvmae features`")
    try:
        model = build_model(model_cfg, "finetune" if classifier else "pretrain", max(num_classes, 1),
                            input_shape=input_shape, input_norm=input_norm)
    except ValueError as e:  # unknown arch or override in a saved model section
        raise ConfigError(f"{key}: {path}: {str(e).splitlines()[0]}") from None
    name = f"{model_cfg.arch}_{'cls' if classifier else 'pretrain'}"
    if classifier and num_classes == 0:
        model.reset_classifier(0)
    elif classifier:
        name += f" with {model.num_classes} classes"
        if "head.0.running_mean" in state:
            from videoconvmae.engine.tasks import make_linear_probe

            model = make_linear_probe(model)
    report = load_pretrained(model, state, key)
    missing = [k for k in report.missing if num_classes or not k.startswith("fc_norm.")]
    unexpected = report.unexpected if num_classes or not classifier else []  # features: decoder / head unused
    if missing or unexpected or report.mismatched:
        parts = [f"{what} {len(keys)}: {', '.join(keys[:3])}"
                 for what, keys in (("missing", missing), ("unexpected", unexpected),
                                    ("of another shape", report.mismatched)) if keys]
        raise ConfigError(f"{key}: {path}: weights do not fit {name} ({'; '.join(parts)})")
    print(f"{key}: {path}: {report.summary()}")
    return model.eval()
