"""The embedded synthetic dataset: real H.264 mp4 / VP9 webm clips whose label is only visible in MOTION.

Every clip shows one textured disk on a flat grey background. Appearance is drawn from the same distribution
for every class (random textures, uniform start position on a torus, uniform start angle), so any single
frame is identically distributed across classes; only the motion over time (direction of translation or
sense of rotation) tells the class. A model that learns the task must use time.

Layout written by ``write_synthetic_dataset(out_dir)`` (``videoconvmae data synth --out DIR``):

    DIR/k400/{train,val}.csv                 official K400 CSV: label,youtube_id,time_start,time_end,split
    DIR/k400/{train,val}/<ytid>_<s:06d>_<e:06d>.mp4   H.264
    DIR/k400/{train,val}.txt                 `<path relative to DIR/k400> <label id>` list form
    DIR/ssv2/labels.json, train.json, validation.json  official SSV2 JSON (template with [something])
    DIR/ssv2/videos/<id>.webm                VP9
    DIR/ssv2/{train,val}.txt                 `<path relative to DIR/ssv2/videos> <label id>` list form
    DIR/imagenet/{train,val}/<wnid>/*.JPEG   image mode: here the class IS visible in one image (its shape)
    DIR/synth.json                           the parameters it was written with

Identical on every machine: each clip is rendered from its own generator seeded by (seed, dataset, split,
index) with integer / IEEE-exact numpy only, converted to yuv420p in numpy (integer BT.601, not swscale, whose
SIMD paths differ between CPUs), and encoded LOSSLESSLY (x264 qp 0, VP9 lossless). Lossy single-threaded
libx264 was measured to emit a different IDR frame for the same input now and then under CPU load (3 writes in
40), so two fresh clones trained on other pixels. The encoded bytes may still differ between writes; the
decoded yuv planes may not: every file is decoded after writing and compared with its rendering (rewritten,
then refused, if they differ), and ``synth.json`` records ``content_sha256``, a hash of every rendering that
is the same on any machine for the same spec. RGB comes from the reader's yuv->rgb conversion.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from videoconvmae.artifacts import atomic_write, write_csv

# (K400-style name, SSV2 template, translation direction (dy, dx) per frame unit, rotation sense)
MOTIONS: tuple[tuple[str, str, tuple[float, float], int], ...] = (
    ("moving right", "Moving [something] from left to right", (0.0, 1.0), 0),
    ("moving left", "Moving [something] from right to left", (0.0, -1.0), 0),
    ("moving down", "Moving [something] down", (1.0, 0.0), 0),
    ("moving up", "Moving [something] up", (-1.0, 0.0), 0),
    ("turning clockwise", "Turning [something] clockwise", (0.0, 0.0), 1),
    ("turning counterclockwise", "Turning [something] counterclockwise", (0.0, 0.0), -1),
    ("moving down and right", "Moving [something] diagonally down and right", (0.7071, 0.7071), 0),
    ("moving up and left", "Moving [something] diagonally up and left", (-0.7071, -0.7071), 0),
)
OBJECT_NAMES = ("a disk", "a coin", "a plate", "a lid", "a badge", "a cookie")
SPLITS = ("train", "val")
# Bumped when the same spec would write other content: a reader of synth.json regenerates an older dataset.
SYNTH_FORMAT = 2  # 2: lossless yuv420p from numpy (1: lossy x264 / VP9 through swscale)


@dataclass
class SynthSpec:
    seed: int = 0  # everything is derived from it
    num_classes: int = 6  # motion classes (5..8), see MOTIONS
    train_per_class: int = 32  # clips per class in the train split (per dataset)
    val_per_class: int = 8  # clips per class in the val split (per dataset)
    num_frames: int = 64  # frames per clip (covers a 16 x 4 dense K400 clip)
    height: int = 64  # frame height (even)
    width: int = 80  # frame width (even)
    fps: int = 25  # nominal frame rate
    images_per_class: int = 20  # image-mode train images per class (val gets a quarter, at least 2)
    image_size: int = 64  # image-mode: images are image_size..1.5*image_size on each side
    workers: int = 1  # processes used to render and encode clips
    background_contrast: float = 0.0  # background texture contrast relative to the disk's (0 = flat grey, 1 = same)
    speed: tuple[float, float] = (0.5, 1.0)  # translation speed range, pixels per frame at 64 px
    turn_degrees: tuple[float, float] = (3.0, 6.0)  # rotation speed range, degrees per frame
    datasets: tuple[str, ...] = ("k400", "ssv2", "imagenet")  # which to write (each one's files are independent)


def _smooth_texture(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """uint8 [h, w, 3]: coarse random colours upsampled (nearest) plus mild fine noise."""
    coarse = rng.integers(0, 256, (cells, cells, 3)).astype(np.float32)
    ys = np.arange(h) * cells // h
    xs = np.arange(w) * cells // w
    img = coarse[ys][:, xs] + rng.normal(0, 12, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _disk_frames(rng: np.random.Generator, motion: int, spec: SynthSpec) -> np.ndarray:
    """uint8 [T, H, W, 3]: a textured disk moving / turning (wrapping around) on a flat or textured background."""
    h, w, t = spec.height, spec.width, spec.num_frames
    _, _, (dy, dx), sense = MOTIONS[motion]
    background = _smooth_texture(rng, h, w, cells=int(rng.integers(4, 9))).astype(np.float32)
    # Flat by default: MAE must be able to predict the background so that its loss goes to the moving disk. On a
    # textured background (unpredictable under tube masks) the tiny pretrain learned nothing about motion and
    # finetuning from it lost to random init (measured: 20-27% vs 42-54% top-1; flat: 80% vs 45%).
    background = (128 + spec.background_contrast * (background - 128)).astype(np.uint8)
    size = int(round(min(h, w) * rng.uniform(0.35, 0.5))) | 1
    texture = _smooth_texture(rng, size, size, cells=int(rng.integers(3, 6)))
    c = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) - c
    inside = yy**2 + xx**2 <= c**2
    speed = rng.uniform(*spec.speed) * min(h, w) / 64  # pixels per frame
    omega = math.radians(rng.uniform(*spec.turn_degrees)) * sense  # radians per frame
    y0, x0, a0 = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, 2 * math.pi)
    frames = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        a = a0 + omega * i  # clockwise on screen (y down) is a positive angle
        cos, sin = math.cos(a), math.sin(a)
        src_y = np.clip(np.rint(cos * yy - sin * xx + c), 0, size - 1).astype(np.intp)
        src_x = np.clip(np.rint(sin * yy + cos * xx + c), 0, size - 1).astype(np.intp)
        patch = texture[src_y, src_x]
        rows = (int(round(y0 + dy * speed * i)) + np.arange(size)) % h
        cols = (int(round(x0 + dx * speed * i)) + np.arange(size)) % w
        frame = background.copy()
        region = frame[np.ix_(rows, cols)]
        frame[np.ix_(rows, cols)] = np.where(inside[..., None], patch, region)
        frames[i] = frame
    return frames


def _shape_image(rng: np.random.Generator, cls: int, spec: SynthSpec) -> np.ndarray:
    """uint8 [H, W, 3]: image-mode sample; the class is the object's SHAPE (visible in one image)."""
    h, w = (int(rng.integers(spec.image_size, spec.image_size * 3 // 2 + 1)) for _ in range(2))
    img = _smooth_texture(rng, h, w, cells=int(rng.integers(4, 9)))
    r = min(h, w) * rng.uniform(0.25, 0.35)
    cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = (yy - cy) / r, (xx - cx) / r
    shapes = (
        u**2 + v**2 <= 1,  # disk
        (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8),  # square
        (u <= 0.8) & (u >= 1.6 * np.abs(v) - 0.9),  # triangle
        (np.abs(u) <= 0.3) | (np.abs(v) <= 0.3),  # cross (clipped below)
        (u**2 + v**2 <= 1) & (u**2 + v**2 >= 0.4),  # ring
        np.abs(u) + np.abs(v) <= 1,  # diamond
        (np.abs(u) <= 0.35) & (np.abs(v) <= 1),  # horizontal bar
        (np.abs(v) <= 0.35) & (np.abs(u) <= 1),  # vertical bar
    )
    mask = shapes[cls] & (np.abs(u) <= 1) & (np.abs(v) <= 1)
    colour = rng.integers(0, 256, 3)
    img[mask] = (0.3 * img[mask] + 0.7 * colour).astype(np.uint8)
    return img


def rgb_to_yuv420p(frames: np.ndarray) -> np.ndarray:
    """uint8 [T, H, W, 3] RGB -> uint8 [T, H * 3 // 2, W]: planar yuv420p (the Y, U, V planes back to back).

    BT.601 limited range in integer arithmetic (the 8-bit form of ITU-R BT.601), chroma from the rounded mean
    of each 2x2 block: the same bytes on every CPU, which swscale's SIMD paths do not promise.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"frames: expected uint8 [T, H, W, 3] with even H, W, got {list(frames.shape)}")
    rgb = frames.astype(np.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    t, h, w = y.shape

    def pooled(c: np.ndarray) -> np.ndarray:
        return (c.reshape(t, h // 2, 2, w // 2, 2).sum(axis=(2, 4)) + 2) // 4

    rp, gp, bp = pooled(r), pooled(g), pooled(b)
    u = ((-38 * rp - 74 * gp + 112 * bp + 128) >> 8) + 128
    v = ((112 * rp - 94 * gp - 18 * bp + 128) >> 8) + 128
    planes = np.concatenate([y.reshape(t, -1), u.reshape(t, -1), v.reshape(t, -1)], axis=1)  # FFmpeg's layout
    return planes.reshape(t, h * 3 // 2, w).clip(0, 255).astype(np.uint8)


def encode_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 25, codec: str | None = None,
                 pts: Sequence[int] | None = None, lossless: bool = False) -> None:
    """Write uint8 [T, H, W, 3] RGB frames with PyAV: H.264 for .mp4, VP9 for .webm, one encoder thread.

    The yuv420p conversion is ours (``rgb_to_yuv420p``); ``lossless`` makes the decoded yuv planes equal to it
    exactly. ``pts`` (in 1/(fps*100) s units) lets tests write variable-frame-rate files.
    """
    encode_yuv420p(path, rgb_to_yuv420p(np.asarray(frames)), fps, codec, pts, lossless)


def encode_yuv420p(path: str | os.PathLike, planes: np.ndarray, fps: int = 25, codec: str | None = None,
                   pts: Sequence[int] | None = None, lossless: bool = False) -> None:
    """``encode_video`` for frames already in ``rgb_to_yuv420p``'s layout, uint8 [T, H * 3 // 2, W]."""
    from fractions import Fraction

    import av

    path = Path(path)
    codec = codec or {".mp4": "libx264", ".webm": "libvpx-vp9"}.get(path.suffix)
    if codec is None:
        raise ValueError(f"{path}: expected a .mp4 or .webm file name")
    if codec == "libx264":
        options = {"qp": "0"} if lossless else {"crf": "20"}
        options.update(preset="veryfast", threads="1")
    else:
        options = {"lossless": "1"} if lossless else {"crf": "30", "b:v": "0"}
        options.update({"deadline": "good", "cpu-used": "8", "threads": "1"})
    height, width = planes.shape[1] * 2 // 3, planes.shape[2]
    # bitexact: no random Matroska segment UID / encoder version tag, so the bytes depend only on the pixels
    with av.open(str(path), "w", container_options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, fps * 100)
        for i, plane in enumerate(planes):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(plane), format="yuv420p")
            if pts is not None:
                frame.pts, frame.time_base = int(pts[i]), Fraction(1, fps * 100)
            else:
                frame.pts, frame.time_base = i, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def decode_yuv420p(path: str | os.PathLike) -> np.ndarray:
    """uint8 [T, H * 3 // 2, W]: the decoded planes of a yuv420p file, without any colour conversion."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="yuv420p") for f in container.decode(video=0)])


def _clip_rng(spec: SynthSpec, dataset: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, ("k400", "ssv2", "imagenet").index(dataset), SPLITS.index(split), index])


def render_clip(job: tuple[SynthSpec, str, str, int, int, str]) -> np.ndarray:
    """uint8 [T, H, W, 3]: the frames of one clip job ``(spec, dataset, split, index, motion, path)``."""
    spec, dataset, split, index, motion, _ = job
    return _disk_frames(_clip_rng(spec, dataset, split, index), motion, spec)


WRITE_ATTEMPTS = 3  # rewrites of a clip whose decoded planes differ from its rendering (never seen, but cheap)


def _write_clip(job: tuple[SynthSpec, str, str, int, int, str]) -> str:
    """Encode one clip losslessly and check that it decodes to its rendering; returns the rendering's sha256."""
    planes = rgb_to_yuv420p(render_clip(job))
    for _ in range(WRITE_ATTEMPTS):
        encode_yuv420p(job[-1], planes, fps=job[0].fps, lossless=True)
        if np.array_equal(decode_yuv420p(job[-1]), planes):  # False for another shape too
            return hashlib.sha256(planes.tobytes()).hexdigest()
    raise RuntimeError(f"{job[-1]}: decoded frames differ from the rendering after {WRITE_ATTEMPTS} lossless writes")


def _write_image(job: tuple[SynthSpec, str, int, int, str]) -> str:
    from PIL import Image

    spec, split, index, cls, path = job
    image = _shape_image(_clip_rng(spec, "imagenet", split, index), cls, spec)
    Image.fromarray(image).save(path, quality=92)
    return hashlib.sha256(image.tobytes()).hexdigest()


def _youtube_id(rng: np.random.Generator) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), 11))


def _split_items(spec: SynthSpec, split: str) -> list[int]:
    """Class index of each clip in the split, interleaved (0, 1, ..., C-1, 0, 1, ...)."""
    per_class = spec.train_per_class if split == "train" else spec.val_per_class
    return [i % spec.num_classes for i in range(per_class * spec.num_classes)]


def _k400_jobs(spec: SynthSpec, root: Path) -> list[tuple]:
    names = [m[0] for m in MOTIONS[: spec.num_classes]]
    sorted_ids = {name: i for i, name in enumerate(sorted(names))}  # K400 ids: names in sorted order
    jobs = []
    for split in SPLITS:
        (root / split).mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([spec.seed, 10, SPLITS.index(split)])
        rows, lines = [], []
        for index, motion in enumerate(_split_items(spec, split)):
            ytid, start = _youtube_id(rng), int(rng.integers(0, 300))
            name = f"{ytid}_{start:06d}_{start + 10:06d}.mp4"
            rows.append((names[motion], ytid, start, start + 10, split))
            lines.append(f"{split}/{name} {sorted_ids[names[motion]]}")
            jobs.append((spec, "k400", split, index, motion, str(root / split / name)))
        write_csv(root / f"{split}.csv", [("label", "youtube_id", "time_start", "time_end", "split"), *rows])
        atomic_write(root / f"{split}.txt", "\n".join(lines) + "\n")
    return jobs


def _ssv2_jobs(spec: SynthSpec, root: Path) -> list[tuple]:
    templates = [m[1] for m in MOTIONS[: spec.num_classes]]
    names = [t.replace("[", "").replace("]", "") for t in templates]
    # Official labels.json maps name -> id as a STRING; ids here follow alphabetical order like the release.
    label_ids = {name: str(i) for i, name in enumerate(sorted(names))}
    (root / "videos").mkdir(parents=True, exist_ok=True)
    atomic_write(root / "labels.json", json.dumps(label_ids, indent=1))
    rng = np.random.default_rng([spec.seed, 20])
    total = sum(len(_split_items(spec, s)) for s in SPLITS)
    video_ids = rng.choice(np.arange(1, 10 * total + 1000), size=total, replace=False)
    jobs, k = [], 0
    for split, json_name in zip(SPLITS, ("train.json", "validation.json")):
        entries, lines = [], []
        for index, motion in enumerate(_split_items(spec, split)):
            vid = str(int(video_ids[k]))
            k += 1
            obj = OBJECT_NAMES[int(rng.integers(0, len(OBJECT_NAMES)))]
            entries.append({"id": vid, "label": templates[motion].replace("[something]", obj),
                            "template": templates[motion], "placeholders": [obj]})
            lines.append(f"{vid}.webm {label_ids[names[motion]]}")
            jobs.append((spec, "ssv2", split, index, motion, str(root / "videos" / f"{vid}.webm")))
        atomic_write(root / json_name, json.dumps(entries, indent=1))
        atomic_write(root / f"{split}.txt", "\n".join(lines) + "\n")
    return jobs


def _imagenet_jobs(spec: SynthSpec, root: Path) -> list[tuple]:
    jobs = []
    for split in SPLITS:
        per_class = spec.images_per_class if split == "train" else max(2, spec.images_per_class // 4)
        for index in range(per_class * spec.num_classes):
            cls = index % spec.num_classes
            folder = root / split / f"n{cls:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            jobs.append((spec, split, index, cls, str(folder / f"synth_{split}_{index:05d}.JPEG")))
    return jobs


DATASET_JOBS = {"k400": _k400_jobs, "ssv2": _ssv2_jobs, "imagenet": _imagenet_jobs}


def write_synthetic_dataset(out_dir: str | os.PathLike, seed: int = 0, **overrides) -> Path:
    """Write the synthetic K400 / SSV2 / ImageNet-style dataset under ``out_dir``; returns its Path.

    ``overrides`` are ``SynthSpec`` fields (e.g. ``train_per_class=3, num_frames=16, height=48, width=64``).
    """
    spec = SynthSpec(seed=seed, **overrides)
    if not 5 <= spec.num_classes <= len(MOTIONS):
        raise ValueError(f"num_classes: expected 5..{len(MOTIONS)}, got {spec.num_classes}")
    if spec.height % 2 or spec.width % 2 or min(spec.height, spec.width) < 16:
        raise ValueError(f"height/width: expected even sizes >= 16, got {spec.height}x{spec.width}")
    if spec.num_frames < 2:
        raise ValueError(f"num_frames: expected >= 2, got {spec.num_frames}")
    spec.datasets = tuple(spec.datasets)
    unknown = sorted(set(spec.datasets) - set(DATASET_JOBS))
    if unknown or not spec.datasets:
        raise ValueError(f"datasets: expected a non-empty subset of {', '.join(DATASET_JOBS)}, "
                         f"got {list(spec.datasets)}")
    out = Path(out_dir)
    jobs = {name: DATASET_JOBS[name](spec, out / name) if name in spec.datasets else [] for name in DATASET_JOBS}
    clip_jobs, image_jobs = jobs["k400"] + jobs["ssv2"], jobs["imagenet"]
    if spec.workers > 1:
        with get_context("spawn").Pool(spec.workers) as pool:
            hashes = pool.map(_write_clip, clip_jobs, chunksize=4) + pool.map(_write_image, image_jobs, chunksize=16)
    else:
        hashes = [_write_clip(job) for job in clip_jobs] + [_write_image(job) for job in image_jobs]
    content = hashlib.sha256("".join(hashes).encode()).hexdigest()
    # written last and atomically: a synth.json that parses means every file above is complete
    atomic_write(out / "synth.json", json.dumps({**asdict(spec), "format": SYNTH_FORMAT, "content_sha256": content},
                                                indent=1))
    return out
