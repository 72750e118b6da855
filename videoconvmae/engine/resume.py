"""What a resume may change: the new run config compared with the one a checkpoint was trained with.

A resumed run must be the run that was started. Keys that only say how the run executes, logs or evaluates
may change on resume; every other key is part of the recipe (model, masking, optimizer, schedule, data
sampling and augmentation, seeds, precision), and a difference is an error unless the user asks for it with
``train.resume_changes=apply``, which then really applies it (optimizer hyper-parameters, schedule, model
switches, data pipeline are all rebuilt from the new config; only the learned state comes from the checkpoint).

Extending ``optim.epochs`` may change without ``apply``: the cosine schedule is re-planned over the new total
(warmup unchanged), so from the resume step on the lr follows the longer curve, i.e. it steps up to that
curve's value at this step and then decays more slowly. Shortening it is a recipe change.
"""

from __future__ import annotations

from typing import Any

from videoconvmae.config import from_dict, to_dict
from videoconvmae.errors import ConfigError

# Keys (or whole sections, ending in ".") that may differ between a checkpoint and the run resuming it.
MAY_CHANGE = (
    "train.output_dir", "train.resume", "train.resume_changes", "train.overwrite", "train.max_steps",
    "train.ckpt_every_steps", "train.keep_last", "train.log_every_steps", "train.eval_every_epochs",
    "train.max_nonfinite_steps", "train.device", "train.dist_backend", "train.find_unused_parameters",
    "train.compile", "train.progress", "train.tensorboard",
    "data.root", "data.val_annotation", "data.num_workers", "data.decode_timeout_s", "data.max_skip_fraction",
    "data.skip_check_min_reads", "data.short_side_size",
    "model.grad_checkpointing", "model.pretrained",  # the resumed weights replace the initialisation
    "eval.", "slurm.",
)


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _normalised(saved: dict) -> dict[str, Any]:
    """The saved config with today's defaults for keys it predates (raw when it no longer validates)."""
    try:
        return flatten(to_dict(from_dict(saved)))
    except ConfigError:
        return flatten(saved)


def may_change(key: str, old: Any, new: Any) -> bool:
    if key == "optim.epochs":
        return isinstance(old, int) and isinstance(new, int) and new >= old
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in MAY_CHANGE)


def config_changes(saved: dict, new: dict) -> tuple[list[tuple[str, Any, Any]], list[tuple[str, Any, Any]]]:
    """(recipe changes, allowed changes), each a list of (key, old, new), between two config dicts."""
    old_flat, new_flat = _normalised(saved), flatten(new)
    recipe, allowed = [], []
    for key in sorted(set(old_flat) | set(new_flat)):
        old, value = old_flat.get(key, "<unset>"), new_flat.get(key, "<unset>")
        if old != value:
            (allowed if may_change(key, old, value) else recipe).append((key, old, value))
    return recipe, allowed


def describe_changes(changes: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in changes)


def check_resume_config(path: str, saved: dict, new: dict, policy: str) -> list[tuple[str, Any, Any]]:
    """Raise ConfigError when recipe keys differ and ``policy`` is not ``apply``; return every change."""
    recipe, allowed = config_changes(saved, new)
    if recipe and policy != "apply":
        raise ConfigError(f"train.resume: {path} was trained with another recipe ({describe_changes(recipe)}); "
                          "start a new run with another train.output_dir, or continue with these changes "
                          "applied: train.resume_changes=apply")
    return recipe + allowed
