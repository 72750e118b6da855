"""``videoconvmae visualize CHECKPOINT INPUT --out FILE``: original / masked / reconstruction side by side.

Panels, left to right: the input, the visible part (masked cells in a colour no input pixel has), the model's
prediction for every cell, and the prediction pasted into the masked cells only. With a normalised loss target
(``model.loss_target`` mae / videomae) each predicted patch is mapped back with the statistics of the true patch
(``pred_to_input``, as MAE's demo does): the picture shows structure, not the absolute colour the model never
had to predict.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from videoconvmae.artifacts import saved_config
from videoconvmae.config import Config, from_dict
from videoconvmae.data import sampling
from videoconvmae.engine.checkpoint import load_task_model
from videoconvmae.errors import ConfigError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


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


def _resize_center_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """[T, 3, H, W] float -> [T, 3, size, size]: short side to ``size``, then the centre square."""
    h, w = frames.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    frames = F.interpolate(frames, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    return frames[..., top:top + size, left:left + size]


def clip_indices(num_frames_in_video: int, cfg: Config) -> list[int]:
    """The clip the pretrain run would see, at its test-time (centred) position (data/sampling.py)."""
    return sampling.clip_indices(pretrain_sampling(cfg), num_frames_in_video, train=False).tolist()


def pretrain_sampling(cfg: Config) -> sampling.ClipSampling:
    return sampling.clip_sampling(cfg.data, "pretrain")


def load_input(path: str | Path, cfg: Config, video: bool) -> tuple[torch.Tensor, float]:
    """Normalised model input ``[1, 3, (T,) S, S]`` and the fps for the output video."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: input file not found")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))[None]  # [1, H, W, 3]
        fps = 1.0
        if video:  # a still image as a static clip
            arr = np.repeat(arr, pretrain_sampling(cfg).num_frames, axis=0)
    else:
        if not video:
            raise ConfigError(f"{path}: an image model needs an image input ({', '.join(IMAGE_SUFFIXES)})")
        from videoconvmae.data import open_video

        reader = open_video(str(path), cfg.data.decoder)
        try:
            arr = reader.get_frames(clip_indices(reader.num_frames, cfg))
            fps = float(reader.fps or 25.0) / pretrain_sampling(cfg).sampling_rate
        finally:
            reader.close()
    frames = torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True)).permute(0, 3, 1, 2).float() / 255.0
    frames = _resize_center_crop(frames, cfg.data.input_size)
    mean = torch.tensor(cfg.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.data.std).view(1, 3, 1, 1)
    frames = (frames - mean) / std
    x = frames.permute(1, 0, 2, 3)[None] if video else frames  # [1, 3, T, S, S] or [1, 3, S, S]
    return x, fps


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
