"""Load weights into a ConvMAE model: our checkpoints, official ConvMAE ones, and 2D weights inflated into 3D.

Accepted inputs: a path (``.pt`` / ``.pth`` via ``torch.load(weights_only=True)``, or ``.safetensors``) or an
in-memory dict; the state dict may sit under ``model`` (ours, MAE / ConvMAE), ``state_dict`` or ``module``, or be
bare; ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes are stripped.

Official ConvMAE layout -> ours:
- ``blocks{1,2}.i.attn`` (their depthwise conv, named attn) -> ``blocks{1,2}.i.dwconv``;
- the 1x1 convs ``conv1``, ``conv2``, ``mlp.fc1``, ``mlp.fc2`` are ``[C_out, C_in, 1, 1]``: reshaped to Linear;
- ``pos_embed``: loaded into a classifier with a learnable table (``model.pos_embed=learnable``; ConvMAE's
  finetuned checkpoints carry their learned table), resampled as timm's ``resample_abs_pos_embed`` when the grids
  differ (``layers.resample_pos_embed``; the checkpoint's grid is inferred, ``_checkpoint_grid``); a 2D table into
  a 3D model is repeated over time plus the fixed temporal term (``layers.temporal_sincos``), which turns the 2D
  sin-cos table into exactly our 3D one. Into a model with a fixed table, and ``decoder_pos_embed`` always (the
  fixed tables ours computes per grid), they are IGNORED and listed in ``LoadReport.ignored`` / ``summary()``.

2D -> 3D inflation (I3D style) where the target conv has one more (temporal) axis:
- patch embeds and fusion convs (kernel = stride): the 2D kernel is repeated over the kT frames and divided by kT,
  so a static clip gives exactly the image response (every frame of a tubelet carries signal, so none is dropped);
- depthwise convs: centre initialisation (the 2D kernel on the centre tap, zeros elsewhere). Spreading would also
  reproduce the image on a static clip, but only away from the clip ends: the zero temporal padding would scale
  the first / last frames by (kT-1)/kT.
What this makes true: on a static clip, STAGES 1-2 of the inflated model give exactly the image model's features
at every frame (each frame is convolved as the image; temporal mixing is then learned). Stage 3 is not the image
model applied frame by frame: its tokens carry the space-time position embedding, whose temporal term is zero
only at t = 0, and attention mixes all temporal slices; the two agree at stage 3 only for a clip of one tubelet
(T = tubelet), where the 3D embedding equals the 2D one.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from videoconvmae.artifacts import read_artifact
from videoconvmae.errors import ConfigError
from videoconvmae.models.layers import resample_pos_embed, temporal_sincos

POS_KEYS = ("pos_embed", "decoder_pos_embed")  # loaded only into a learnable table; else ignored (fixed tables)
WRAPPER_KEYS = ("model", "state_dict", "module")
PREFIXES = ("module.", "_orig_mod.")
OFFICIAL_DWCONV = re.compile(r"^(blocks[12]\.\d+\.)attn\.")


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)  # model keys the checkpoint did not provide
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys the model has no place for
    mismatched: list[str] = field(default_factory=list)  # in both but with incompatible shapes: not loaded
    converted: list[str] = field(default_factory=list)  # renamed / reshaped / inflated on the way in
    ignored: list[str] = field(default_factory=list)  # deliberately dropped (pos tables the model computes)

    def summary(self) -> str:
        """One line: ``N missing, M unexpected, K converted, J ignored; missing: a, b; ...; ignored: ...``."""
        counts = (f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, {len(self.converted)} converted, "
                  f"{len(self.ignored)} ignored")
        details = [f"{name}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                   for name in ("missing", "unexpected", "mismatched", "ignored") if (keys := getattr(self, name))]
        return "; ".join([counts, *details])


def read_state_dict(path_or_state: str | os.PathLike | dict, key: str = "model.pretrained",
                    use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The flat ``name -> tensor`` dict inside a checkpoint file or object (``use_ema``: a training checkpoint's
    ``ema`` weights); one clear line on bad input."""
    source = str(path_or_state) if not isinstance(path_or_state, dict) else "state dict"
    obj = path_or_state if isinstance(path_or_state, dict) else read_artifact(path_or_state, key)
    if use_ema:
        if not isinstance(obj.get("ema"), dict):
            raise ConfigError(f"{key}: {source}: holds no EMA weights (an exported file or a run without EMA)")
        obj = obj["ema"]
    for wrapper in WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"{key}: {source}: expected a state dict of tensors (bare or under 'model'), "
                          f"got {type(obj).__name__}")
    state = {}
    for name, value in obj.items():
        for prefix in PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
        state[name] = value
    return state


def _inflate(name: str, src: torch.Tensor, target_shape: torch.Size) -> torch.Tensor:
    """A 2D conv kernel [O, I, kh, kw] -> 3D [O, I, kT, kh, kw] (see the module docstring for the rule)."""
    k_t = target_shape[2]
    if ".dwconv." in name:
        out = src.new_zeros(target_shape)
        out[:, :, k_t // 2] = src
        return out
    return src.unsqueeze(2).repeat(1, 1, k_t, 1, 1) / k_t


def _checkpoint_grid(length: int, model_grid: tuple[int, ...]) -> tuple[int, ...] | None:
    """The grid a checkpoint's table of ``length`` positions was made for, tried in this order: the model's own;
    square in space (with the model's T for video); for video, the model's space with another T; a square 2D
    table (an image checkpoint into a video model); else None."""
    if length == math.prod(model_grid):
        return model_grid
    t = model_grid[0] if len(model_grid) == 3 else 1
    side = math.isqrt(length // t) if length % t == 0 else 0
    if side * side * t == length:
        return (*model_grid[:-2], side, side)
    if len(model_grid) == 3:
        h, w = model_grid[1:]
        if length % (h * w) == 0:
            return (length // (h * w), h, w)
        side = math.isqrt(length)
        if side * side == length:
            return (side, side)
    return None


def fit_pos_table(model: nn.Module, table: torch.Tensor) -> torch.Tensor:
    """A position table [1, L, C] fitted to ``model``'s learnable ``pos_embed`` grid (the checkpoint's grid as
    ``_checkpoint_grid`` infers it; a 2D table into a 3D model gains the temporal term).
    Raises ValueError when it cannot fit."""
    target, model_grid = model.pos_embed, tuple(model.pos_grid)
    grid = _checkpoint_grid(table.shape[1], model_grid) if table.ndim == 3 else None
    if grid is None or table.shape[-1] != target.shape[-1]:
        raise ValueError(f"pos_embed {list(table.shape)} does not fit {list(target.shape)} (grid {list(model_grid)})")
    if grid == model_grid:
        return table
    if len(grid) == 2 and len(model_grid) == 3:  # an image table into a video model
        temporal = temporal_sincos(table.shape[-1], model_grid[0]).to(table.dtype)
        table = (table[:, None] + temporal[None, :, None]).reshape(1, -1, table.shape[-1])
        grid = (model_grid[0], *grid)
    return resample_pos_embed(table, grid, model_grid)


def _load_pos_table(name: str, value: torch.Tensor, model: nn.Module, report: LoadReport) -> torch.Tensor | None:
    """A checkpoint's position table fitted to the model's learnable ``pos_embed``, or None (reported)."""
    try:
        table = fit_pos_table(model, value)
    except ValueError:
        report.mismatched.append(f"{name} {list(value.shape)} -> {list(model.pos_embed.shape)}")
        return None
    if table is not value:
        report.converted.append(name)
    return table


def convert_state_dict(state: dict[str, torch.Tensor], model: nn.Module,
                       report: LoadReport) -> dict[str, torch.Tensor]:
    """Map official / 2D weights onto ``model``'s keys and shapes; shape conflicts go to ``report.mismatched``."""
    targets = model.state_dict()
    out = {}
    for name, value in state.items():
        if name in POS_KEYS:
            if name == "pos_embed" and isinstance(getattr(model, "pos_embed", None), nn.Parameter):
                if (table := _load_pos_table(name, value, model, report)) is not None:
                    out[name] = table
            else:
                report.ignored.append(name)
            continue
        new_name = OFFICIAL_DWCONV.sub(r"\1dwconv.", name)
        target = targets.get(new_name)
        if target is not None and value.shape != target.shape:
            if value.ndim == target.ndim + 2 and value.shape[2:].numel() == 1 and value.shape[:2] == target.shape:
                value = value.reshape(target.shape)  # official 1x1 conv -> Linear
            elif value.ndim + 1 == target.ndim == 5 and value.shape[:2] == target.shape[:2] \
                    and value.shape[2:] == target.shape[3:]:
                value = _inflate(new_name, value, target.shape)
            else:
                report.mismatched.append(f"{name} {list(value.shape)} -> {list(target.shape)}")
                continue
            report.converted.append(name)
        elif new_name != name:
            report.converted.append(name)
        out[new_name] = value
    return out


def load_pretrained(model: nn.Module, path_or_state: str | os.PathLike | dict,
                    key: str = "model.pretrained") -> LoadReport:
    """Load ours / official ConvMAE (full or encoder-only) / 2D-into-3D weights; returns what did not match.
    ``key`` names the config key the file came from in an error."""
    report = LoadReport()
    state = convert_state_dict(read_state_dict(path_or_state, key), model, report)
    result = model.load_state_dict(state, strict=False)
    report.missing = list(result.missing_keys)
    report.unexpected = list(result.unexpected_keys)
    return report
