"""Data-loading throughput, measured side by side in one run on the same files and the same frames.

    .venv/bin/python bench/bench_data.py [--clips 32] [--video-frames 150] [--size 320x240] [--input-size 224]
                                         [--grain 6] [--dir DIR]

Writes K400-like H.264 mp4 (and VP9 webm) clips (synthetic motion + sensor-like grain for a real-footage bitrate,
~0.7 Mbit/s at 320x240; ``--grain 0`` gives the smooth synthetic pictures, ~0.2 Mbit/s, whose decode is so cheap
that the fixed per-clip cost of a float32 224px clip dominates), then reports clips/s for
  1. the raw decoder: open + decode the 16 x 4 dense clip + close, one thread, in this process;
  2. the training loader exactly as the Trainer builds it (``Trainer.loader``: ``SeededItems`` over the k400
     pretrain dataset, the ResumableSampler, the collate, a new iterator per epoch; 2 epochs, each every file
     ``--passes`` times) with 2 and 1 worker processes, batch 8, the same decoder and dense sampling
     (multi-scale crop, flip, normalisation); the batched fetch decodes the next clip in the decode (watchdog)
     thread while the current one is augmented; a last line shows 1 worker without that overlap;
  3. each backend (decord / pyav / torchcodec) on the same mp4 and webm files.
Goal: Trainer-loader clips/s (2 workers) >= 0.9x raw decoder clips/s. On this 2-core machine the 2-worker number
also competes with the main process and with other jobs, so read ratios, not absolute speeds.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from videoconvmae.data.config import DataConfig  # noqa: E402
from videoconvmae.data.sampling import clip_indices, clip_sampling  # noqa: E402
from videoconvmae.data.synth import SynthSpec, _disk_frames, encode_video  # noqa: E402
from videoconvmae.data.video import BACKENDS, open_video  # noqa: E402


def write_clips(folder: Path, n: int, frames: int, h: int, w: int, ext: str, grain: float) -> list[Path]:
    """Synthetic motion clips plus per-frame sensor-like noise (``grain``, std in 0..255 units): the smooth
    synthetic pictures alone encode at ~0.2 Mbit/s, far cheaper to decode than real footage; grain brings
    the bitrate (and the decode cost per frame) to that of real K400 files."""
    spec = SynthSpec(num_frames=frames, height=h, width=w)
    paths = []
    for i in range(n):
        path = folder / f"clip{i:03d}_g{grain:g}{ext}"
        if not path.exists():
            rng = np.random.default_rng([7, i])
            clip = _disk_frames(rng, i % 6, spec).astype(np.float32)
            clip += rng.normal(0, grain, clip.shape).astype(np.float32) if grain > 0 else 0
            encode_video(path, np.clip(clip, 0, 255).astype(np.uint8))
        paths.append(path)
    return paths


def raw_clips_per_s(paths: list[Path], backend: str, cfg: DataConfig, passes: int) -> float:
    random.seed(0)
    start, n = time.perf_counter(), 0
    for _ in range(passes):
        for path in paths:
            with open_video(path, backend) as reader:
                idx = clip_indices(clip_sampling(cfg, "pretrain"), reader.num_frames, train=True)
                reader.get_frames(idx)
            n += 1
    return n / (time.perf_counter() - start)


def trainer_loader_clips_per_s(folder: Path, input_size: int, workers: int, epochs: int,
                               overrides: tuple[str, ...] = ()) -> float:
    """The Trainer's own loader (``Trainer.loader``) over ``epochs`` epochs, a new iterator per epoch as in
    training; the clock starts at the first batch (the first worker start-up is not throughput) and the clips of
    that batch are not counted; later epochs' worker start-ups are, as the Trainer pays them."""
    from videoconvmae.config import load_config
    from videoconvmae.engine.distributed import DistInfo
    from videoconvmae.engine.tasks import build_parts
    from videoconvmae.engine.trainer import Trainer

    with tempfile.TemporaryDirectory() as out:
        cfg = load_config("pretrain_k400_tiny", [
            f"data.root={folder}", f"data.train_annotation={folder / 'train.txt'}", "data.val_annotation=",
            "data.decoder=decord", "data.num_frames=16", "data.sampling_rate=4", f"data.input_size={input_size}",
            f"data.short_side_size={input_size}", "data.pretrain_crop=multiscale", "data.flip=true",
            "data.batch_size=8", f"data.num_workers={workers}", f"train.output_dir={out}", "train.progress=false",
            "train.tensorboard=false", *overrides])
        trainer = Trainer(cfg, build_parts(cfg, DistInfo()), DistInfo())
        try:
            start, n = None, 0
            for epoch in range(epochs):
                for batch in trainer.loader(epoch, 0):
                    if start is None:
                        start = time.perf_counter()
                    else:
                        n += batch["input"].shape[0]
            return n / (time.perf_counter() - start)
        finally:
            trainer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=32, help="distinct video files")
    parser.add_argument("--video-frames", type=int, default=150, help="frames per video file")
    parser.add_argument("--size", default="320x240", help="WxH of the video files")
    parser.add_argument("--input-size", type=int, default=224, help="crop size the loader produces")
    parser.add_argument("--passes", type=int, default=2, help="passes over the files per measurement")
    parser.add_argument("--grain", type=float, default=6.0, help="per-frame noise std (0 = smooth synthetic)")
    parser.add_argument("--dir", default="", help="where to write the files (default: a temp folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    w, h = (int(v) for v in args.size.split("x"))
    folder = Path(args.dir or tempfile.mkdtemp(prefix="bench_data_"))
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    mp4 = write_clips(folder, args.clips, args.video_frames, h, w, ".mp4", args.grain)
    webm = write_clips(folder, max(4, args.clips // 4), args.video_frames, h, w, ".webm", args.grain)
    # the Trainer's epoch: every file --passes times (links, distinct ids), so a new iterator per epoch is paid as
    # often per clip as in a real epoch-long run, not once per handful of batches
    names = []
    for copy in range(args.passes):
        for p in mp4:
            link = p.with_name(f"{p.stem}_copy{copy}{p.suffix}")
            if not link.exists():
                link.symlink_to(p.name)
            names.append(link.name)
    (folder / "train.txt").write_text("".join(f"{n} {i % 6}\n" for i, n in enumerate(names)))
    mbps = sum(p.stat().st_size for p in mp4) * 8 / (len(mp4) * args.video_frames / 25) / 1e6
    print(f"files: {len(mp4)} mp4 + {len(webm)} webm, {args.video_frames} frames {w}x{h} at 25 fps, grain "
          f"{args.grain:g} -> H.264 {mbps:.2f} Mbit/s, written in {time.perf_counter() - t0:.1f} s to {folder}; "
          f"clip = 16 frames, sampling rate 4, loader output {args.input_size}px; {os.cpu_count()} CPU cores")

    cfg = DataConfig(dataset="k400", sampling_rate=4)  # the sampling of the Trainer's loader below (16 x 4)
    raw = raw_clips_per_s(mp4, "decord", cfg, args.passes)
    two = trainer_loader_clips_per_s(folder, args.input_size, 2, 2)
    one = trainer_loader_clips_per_s(folder, args.input_size, 1, 2)
    serial = trainer_loader_clips_per_s(folder, args.input_size, 1, 2, ("data.decode_timeout_s=0",))
    raw_again = raw_clips_per_s(mp4, "decord", cfg, args.passes)  # bracket the loader runs: machine load drifts
    raw_mean = (raw + raw_again) / 2
    print(f"raw decord decode (1 thread, this process): {raw:.1f} / {raw_again:.1f} clips/s (mean {raw_mean:.1f})")
    print(f"Trainer loader, 2 workers: {two:.1f} clips/s = {two / raw_mean:.2f}x raw   (goal >= 0.9x)")
    print(f"Trainer loader, 1 worker:  {one:.1f} clips/s = {one / raw_mean:.2f}x raw")
    print(f"Trainer loader, 1 worker, no decode thread (decode_timeout_s=0: augmentation not overlapped with the "
          f"next decode): {serial:.1f} clips/s = {serial / raw_mean:.2f}x raw")
    print(f"{'backend':<12} {'mp4 clips/s':>12} {'webm clips/s':>13}")
    for backend in BACKENDS:
        print(f"{backend:<12} {raw_clips_per_s(mp4, backend, cfg, 1):>12.1f} "
              f"{raw_clips_per_s(webm, backend, cfg, 1):>13.1f}")


if __name__ == "__main__":
    main()
