"""Multi-view eval throughput: one decode per video (ours) vs one decode per view (VideoMAE's test loader).

    .venv/bin/python bench/bench_eval.py            # 12 K400-like clips (300 frames, 240x320 H.264), 5x3 views
                                                    # of 16 frames at stride 4, 224x224 crops
    .venv/bin/python bench/bench_eval.py --quick    # 4 short clips: a seconds-long smoke run
    .venv/bin/python bench/bench_eval.py --model videoconvmae_tiny   # also run a classifier on every view

Both pipelines run in this one process, on the same files, with the same decoder, one thread each, alternating
(ours, baseline, ours, baseline, ...; the best of ``--repeats`` rounds is reported):

- ours (``videoconvmae.data.views.ViewsDataset``): open once, ``get_frames`` on the union of the 5 clips'
  frames once, resize those frames once, cut all 15 views, normalise;
- baseline, as VideoMAE ``kinetics.py`` test mode does for every one of the 15 (temporal, spatial) views:
  open, decode every ``sampling_rate``-th frame of the whole video, resize all of them, slice the clip,
  crop, normalise.

Goal: ours >= 5x the baseline's videos/s at 5x3 views. The views of both are compared (must be equal), so the
speed-up is not bought with different inputs. With ``--model`` the classifier's forward over the same 15 views
is added to both sides (identical work: it dilutes the ratio on CPU; on a GPU the model is rarely the limit).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout without install

from videoconvmae.data.records import VideoRecord  # noqa: E402
from videoconvmae.data.synth import encode_video  # noqa: E402
from videoconvmae.data.transforms import normalize  # noqa: E402
from videoconvmae.data.video import open_video  # noqa: E402
from videoconvmae.data.views import (  # noqa: E402
    ViewsDataset,
    ViewSpec,
    k400_temporal_views,
    resize_frames,
    resized_hw,
    spatial_crop_origins,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def write_clips(folder: Path, count: int, frames: int, height: int, width: int, seed: int = 0) -> list[Path]:
    """Textured clips with global motion (so the codec has real inter-frame work), H.264 mp4."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        coarse = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
        texture = np.repeat(np.repeat(coarse, 8, 0), 8, 1)
        noise = rng.integers(0, 24, texture.shape, dtype=np.uint8)
        texture = texture + noise
        dy, dx = rng.integers(1, 4, 2)
        video = np.stack([np.roll(texture, (t * dy, t * dx), (0, 1))[:height, :width] for t in range(frames)])
        path = folder / f"clip_{i:03d}.mp4"
        encode_video(path, video)
        paths.append(path)
    return paths


def baseline_views(path: str, spec: ViewSpec) -> torch.Tensor:
    """VideoMAE's test loader, one (temporal, spatial) view per decode, for all T x S views of one video."""
    views = []
    for k in range(spec.num_temporal):
        for i in range(spec.num_spatial):
            reader = open_video(path, spec.decoder)
            try:
                num = reader.num_frames
                buffer_idx = list(range(0, num, spec.sampling_rate))
                buffer_idx += [buffer_idx[-1]] * max(spec.clip_len - len(buffer_idx), 0)
                frames = reader.get_frames(buffer_idx)
            finally:
                reader.close()
            x = torch.from_numpy(frames).permute(0, 3, 1, 2)
            size = resized_hw(x.shape[2], x.shape[3], spec.short_side)
            x = resize_frames(x, size)  # the whole buffer, for every view (as upstream, uint8 in and out)
            step = max(1.0 * (len(buffer_idx) - spec.clip_len) / (spec.num_temporal - 1), 0)
            start = int(k * step)
            top, left = spatial_crop_origins(*size, spec.crop, spec.num_spatial)[i]
            clip = x[start:start + spec.clip_len, :, top:top + spec.crop, left:left + spec.crop]
            views.append(normalize(clip.permute(1, 0, 2, 3).unsqueeze(0), spec.mean, spec.std)[0])
    return torch.stack(views)


def time_pipeline(get_views, items: list, model: torch.nn.Module | None) -> tuple[float, torch.Tensor]:
    first = None
    start = time.perf_counter()
    for item in items:
        views = get_views(item)
        if model is not None:
            with torch.inference_mode():
                model(views)
        first = views if first is None else first
    return time.perf_counter() - start, first


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4 clips of 80 frames at 120x160, 112 crops")
    p.add_argument("--videos", type=int, default=12)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--size", type=int, default=224, help="short side = crop size")
    p.add_argument("--views", default="5x3", help="T x S")
    p.add_argument("--decoder", default="decord")
    p.add_argument("--model", default="", help="also classify every view with this registry family")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    if args.quick:
        args.videos, args.frames, args.height, args.width, args.size, args.repeats = 4, 80, 120, 160, 112, 1
    t_views, s_views = (int(v) for v in args.views.lower().split("x"))
    torch.set_num_threads(1)
    spec = ViewSpec(dataset="k400", sampling="dense", clip_len=16, sampling_rate=4, num_segments=16,
                    short_side=args.size,
                    crop=args.size, num_temporal=t_views, num_spatial=s_views, mean=MEAN, std=STD,
                    decoder=args.decoder)
    model = None
    if args.model:
        from videoconvmae.models import create_model

        model = create_model(f"{args.model}_cls", num_classes=400).eval()

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        paths = write_clips(Path(tmp), args.videos, args.frames, args.height, args.width)
        print(f"wrote {len(paths)} clips of {args.frames} frames {args.height}x{args.width} "
              f"in {time.perf_counter() - t0:.1f}s", flush=True)
        records = [VideoRecord(p.stem, str(p), 0) for p in paths]
        ours_ds = ViewsDataset(records, list(range(len(records))), spec)

        def ours(i: int) -> torch.Tensor:
            item = ours_ds[i]
            if item["views"] is None:
                raise RuntimeError(item["error"])
            return normalize(item["views"], spec.mean, spec.std)  # ours defers this to the model's device

        best = {"ours": float("inf"), "baseline": float("inf")}
        for _ in range(args.repeats):
            t, ours_first = time_pipeline(ours, list(range(len(records))), model)
            best["ours"] = min(best["ours"], t)
            t, base_first = time_pipeline(lambda i: baseline_views(records[i].path, spec), list(range(len(records))),
                                          model)
            best["baseline"] = min(best["baseline"], t)
        diff = float((ours_first - base_first).abs().max())
        if ours_first.shape != base_first.shape or diff > 1e-5:
            print(f"error: views differ (shapes {tuple(ours_first.shape)} vs {tuple(base_first.shape)}, "
                  f"max |diff| {diff})", file=sys.stderr)
            return 1
        expected_union = len(np.unique(k400_temporal_views(args.frames, 16, 4, t_views)))

    n = len(records)
    result = {
        "views": f"{t_views}x{s_views}", "videos": n, "frames": args.frames, "size": f"{args.height}x{args.width}",
        "crop": args.size, "decoder": args.decoder, "model": args.model or None,
        "frames_decoded_per_video": {"ours": expected_union,
                                     "baseline": t_views * s_views * len(range(0, args.frames, 4))},
        "ours_videos_per_s": n / best["ours"], "baseline_videos_per_s": n / best["baseline"],
        "speedup": best["baseline"] / best["ours"], "max_abs_view_diff": diff,
    }
    print(f"{result['views']} views, {n} videos of {args.frames} frames {result['size']} -> {args.size} crops, "
          f"{args.decoder}{', model ' + args.model if args.model else ''}:")
    print(f"  ours (1 decode / video):      {result['ours_videos_per_s']:7.2f} videos/s")
    print(f"  baseline (1 decode / view):   {result['baseline_videos_per_s']:7.2f} videos/s")
    print(f"  speed-up {result['speedup']:.1f}x (goal >= 5x); views identical (max |diff| {diff:.1e})")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
