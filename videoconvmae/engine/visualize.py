"""``videoconvmae visualize CHECKPOINT INPUT --out FILE``: original / masked / reconstruction side by side.

Panels, left to right: the input, the visible part (masked cells in a colour no input pixel has), the model's
prediction for every cell, and the prediction pasted into the masked cells only. With a normalised loss target
(``model.loss_target`` mae / videomae) each predicted patch is mapped back with the statistics of the true patch
(``pred_to_input``, as MAE's demo does): the picture shows structure, not the absolute colour the model never
had to predict.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from videoconvmae.artifacts import saved_config
from videoconvmae.config import Config, from_dict
from videoconvmae.data.records import IMAGE_EXTENSIONS
from videoconvmae.data.transforms import normalize
from videoconvmae.data.video import UnreadableError
from videoconvmae.data.views import ViewSpec, decode_video_views, load_image_views
from videoconvmae.engine.checkpoint import load_task_model
from videoconvmae.errors import ConfigError


def load_pretrain_model(checkpoint: str | Path) -> tuple[torch.nn.Module, Config]:
    """A pretrain model from any weight file that carries its config (training checkpoint, weights.pt,
    .safetensors)."""
    saved = saved_config(checkpoint, "visualize")
    if saved is None:
        raise ConfigError(f"visualize: {checkpoint}: no config saved with the weights (a videoconvmae checkpoint, "
                          "weights.pt or .safetensors is needed)")
    cfg = from_dict(saved)
    if cfg.task != "pretrain":
        raise ConfigError(f"visualize: {checkpoint}: a {cfg.task} checkpoint; visualize needs a pretrain checkpoint")
    model = load_task_model(checkpoint, cfg.model, "pretrain", input_norm=(cfg.data.mean, cfg.data.std),
                            key="visualize")
    return model, cfg


def load_input(path: str | Path, cfg: Config, video: bool) -> tuple[torch.Tensor, float]:
    """Normalised model input ``[1, 3, (T,) S, S]`` (the pretrain run's clip sampling, its centred test view of
    the whole centre square: data/views.py) and the fps for the output video."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: input file not found")
    spec = dataclasses.replace(ViewSpec.of(cfg.data, "pretrain"), short_side=cfg.data.input_size)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        views, fps = load_image_views(str(path), spec), 1.0  # [1, 3, S, S]
        if video:  # a still image as a static clip
            views = views[:, :, None].expand(-1, -1, spec.clip_len, -1, -1)
    elif not video:
        raise ConfigError(f"{path}: an image model needs an image input ({', '.join(IMAGE_EXTENSIONS)})")
    else:
        try:
            views, plan = decode_video_views(str(path), spec)  # [1, 3, T, S, S]
        except UnreadableError as e:
            raise ConfigError(str(e)) from None
        fps = (plan.fps or 25.0) / spec.sampling_rate
    return normalize(views, cfg.data.mean, cfg.data.std), fps


@torch.no_grad()
def reconstruct(model: torch.nn.Module, x: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """original, masked (visible cells), prediction, prediction pasted into masked cells; all like ``x``."""
    out = model(x, generator=torch.Generator(device=x.device).manual_seed(seed))
    pred, mask = model.pred_to_input(out["pred"], x), out["mask"]
    recon = model.unpatchify(pred, x.shape)
    hidden = model.unpatchify(mask[..., None].float().expand(-1, -1, pred.shape[-1]), x.shape)  # 1 = masked
    return {"original": x, "masked": x * (1 - hidden), "reconstruction": recon,
            "pasted": x * (1 - hidden) + recon * hidden, "hidden": hidden}


def _to_uint8(x: torch.Tensor, cfg: Config) -> np.ndarray:
    """[1, 3, (T,) H, W] normalised -> uint8 [T, H, W, 3]."""
    x = x[0]
    if x.ndim == 3:
        x = x[:, None]
    mean = torch.tensor(cfg.data.mean).view(3, 1, 1, 1)
    std = torch.tensor(cfg.data.std).view(3, 1, 1, 1)
    img = (x * std + mean).clamp(0, 1) * 255
    return img.round().byte().permute(1, 2, 3, 0).numpy()


MARK_COLOURS = ((255, 0, 255), (0, 255, 255), (255, 255, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 0),
                (255, 255, 255))


def mask_colour(pixels: np.ndarray) -> tuple[int, int, int]:
    """The candidate colour farthest (max over candidates of the min L1 distance) from every input pixel
    ``pixels`` uint8 [P, 3]: a grey mark would look like a grey background (as the synthetic videos have)."""
    if len(pixels) == 0:
        return MARK_COLOURS[0]
    colours = np.unique(pixels.reshape(-1, 3), axis=0).astype(np.int32)
    distance = [int(np.abs(colours - np.array(c)).sum(axis=1).min()) for c in MARK_COLOURS]
    return MARK_COLOURS[int(np.argmax(distance))]


def side_by_side(panels: dict[str, torch.Tensor], cfg: Config) -> np.ndarray:
    """uint8 [T, H, 4*W + 3*gap, 3]: original | masked (cells in ``mask_colour``) | reconstruction | pasted."""
    masked = _to_uint8(panels["masked"], cfg)
    hidden_px = panels["hidden"][0, 0]
    hidden_px = (hidden_px[None] if hidden_px.ndim == 2 else hidden_px).numpy() > 0.5  # [T, H, W]
    original = _to_uint8(panels["original"], cfg)
    masked[hidden_px] = mask_colour(original.reshape(-1, 3))
    parts = [original, masked, _to_uint8(panels["reconstruction"], cfg),
             _to_uint8(panels["pasted"], cfg)]
    t, h = parts[0].shape[:2]
    gap = np.full((t, h, 4, 3), 255, np.uint8)
    row = [parts[0]]
    for p in parts[1:]:
        row += [gap, p]
    return np.concatenate(row, axis=2)


def write_output(frames: np.ndarray, out: str | Path, fps: float) -> Path:
    """png for one frame, gif (PIL) or mp4 (PyAV, H.264) for several."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    from PIL import Image

    if suffix == ".png":
        if len(frames) != 1:
            raise ConfigError(f"--out {out}: a video gives several frames; use .gif or .mp4")
        Image.fromarray(frames[0]).save(out)
    elif suffix == ".gif":
        images = [Image.fromarray(f) for f in frames]
        images[0].save(out, save_all=True, append_images=images[1:], duration=max(20, round(1000 / fps)), loop=0)
    elif suffix == ".mp4":
        import av

        h, w = frames.shape[1:3]
        pad = ((0, 0), (0, h % 2), (0, w % 2), (0, 0))  # yuv420p needs even sizes
        frames = np.pad(frames, pad)
        with av.open(str(out), "w") as container:
            stream = container.add_stream("libx264", rate=max(1, round(fps)))
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            for f in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
            container.mux(stream.encode())
    else:
        raise ConfigError(f"--out {out}: expected a .png (image), .gif or .mp4 (video) file name")
    return out


def visualize(checkpoint: str | Path, input_path: str | Path, out: str | Path, seed: int = 0,
              mask_ratio: float | None = None) -> Path:
    model, cfg = load_pretrain_model(checkpoint)
    if mask_ratio is not None:
        model.mask_ratio = mask_ratio
    x, fps = load_input(input_path, cfg, video=model.spatial_dims == 3)
    frames = side_by_side(reconstruct(model, x, seed), cfg)
    return write_output(frames, out, fps)
