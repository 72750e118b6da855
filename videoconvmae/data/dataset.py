"""Datasets, the batch collate and skip accounting.

``build_dataset(cfg, split, mode)`` -> a map-style Dataset whose item ``i`` is ``{"input": float [C, T, S, S]
(video) | [C, S, S] (image), with repeated_aug R > 1 a leading [R, ...], "label", "index": i, "num_clips": R,
"skips": {reason: count}}``: R augmentations of ONE decode (train split only).

An unreadable item is replaced by another picked from (data.seed, index, attempt), so a run sees the same data
whichever worker reads it; every failed read is counted in ``skips`` (``SkipStats.check`` raises the one line).
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from videoconvmae.data.config import DataConfig
from videoconvmae.data.records import VideoRecord, annotation_path, load_records
from videoconvmae.data.sampling import clip_indices, clip_sampling
from videoconvmae.data.seeding import ItemStreams
from videoconvmae.data.transforms import ClipTransform
from videoconvmae.data.video import BACKENDS, SKIP_REASONS, UnreadableError, describe, start_clip_read, start_read
from videoconvmae.errors import ConfigError, DataError
from videoconvmae.task import Task


def start_image_read(path: str, timeout_s: float | None = None) -> Callable[[], np.ndarray]:
    """Begin decoding an image file with PIL; ``wait()`` -> uint8 [1, H, W, 3] (a clip of one frame)."""

    def work() -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(path) as img:
                return np.array(img.convert("RGB"))[None]
        except Exception as e:
            raise UnreadableError("decode_error", path, describe(e)) from None

    return start_read(path, work, timeout_s, "PIL image decode")


def read_image(path: str, timeout_s: float | None = None) -> np.ndarray:
    """uint8 [1, H, W, 3]: an image file decoded with PIL."""
    return start_image_read(path, timeout_s)()


class ClipDataset(Dataset):
    """Video clips (k400 dense / ssv2 segment sampling) or images (imagefolder) with one mode's transform."""

    def __init__(self, cfg: DataConfig, records: list[VideoRecord], class_names: list[str], split: str,
                 mode: str, annotation: str = "") -> None:
        Task.parse(mode, "mode", train=True)
        _validate(cfg)
        self.cfg, self.records, self.class_names = cfg, records, class_names
        self.split, self.mode, self.annotation = split, mode, annotation
        self.train = split == "train"
        self.is_image = cfg.dataset == "imagefolder"
        self.sampling = None if self.is_image else clip_sampling(cfg, mode)
        self.transform = ClipTransform(cfg, mode, self.train)
        self.num_clips = max(1, cfg.repeated_aug) if self.train else 1
        self._require_one_readable()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    def choose_indices(self, num_video_frames: int, rng: random.Random) -> np.ndarray:
        return clip_indices(self.sampling, num_video_frames, self.train, rng)

    def start_load(self, record: VideoRecord) -> Callable[[], np.ndarray]:
        """Begin decoding ``record`` in the decode thread; ``wait()`` -> uint8 [T, H, W, 3] or UnreadableError."""
        timeout = self.cfg.decode_timeout_s
        if self.is_image:
            return start_image_read(record.path, timeout)
        rng = random.Random(random.getrandbits(64))  # drawn here: the decode thread must not share `random`
        return start_clip_read(record.path, self.cfg.decoder, lambda n, fps: self.choose_indices(n, rng), timeout)

    def replacement(self, index: int, attempt: int) -> int:
        """The deterministic stand-in for unreadable item ``index`` at retry ``attempt``."""
        return int(np.random.default_rng([self.cfg.seed, index, attempt]).integers(len(self.records)))

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def clip_shape(self) -> tuple[int, ...]:
        """Shape of one augmented clip: [3, T, S, S], or [3, S, S] for images."""
        size = self.cfg.input_size
        return (3, size, size) if self.is_image else (3, self.sampling.num_frames, size, size)

    def __getitems__(self, indices: Sequence[int], streams: ItemStreams | None = None) -> list[dict[str, Any]]:
        """Items of a batch, augmented straight into the rows of one batch tensor (shared memory in a worker, so
        ``collate`` and the hand-over to the main process copy nothing); the next item decodes in the decode
        thread while this one is augmented. ``streams``: item k draws from its own RNG streams (``SeededItems``);
        None: from the global ones."""
        scope = streams.scope if streams is not None else lambda k: contextlib.nullcontext()

        def start(k: int) -> Callable[[], np.ndarray]:
            with scope(k):
                return self.start_load(self.records[indices[k]])

        r = self.num_clips
        batch = _new_tensor((len(indices) * r, *self.clip_shape()))
        items = []
        pending = start(0) if len(indices) else None
        for k, index in enumerate(indices):
            with scope(k):
                frames, record, skips, bad_files = self._wait_with_retries(index, pending)
            pending = start(k + 1) if k + 1 < len(indices) else None
            rows = batch[k * r:(k + 1) * r]
            with scope(k):
                for row in rows:
                    self.transform(frames, out=row.unsqueeze(1) if self.is_image else row)
            items.append({"input": rows[0] if r == 1 else rows, "label": record.label, "index": int(index),
                          "num_clips": r, "skips": skips, "skipped_files": bad_files, "_batch": batch})
        return items

    def _wait_with_retries(self, index: int, pending: Callable[[], np.ndarray]
                           ) -> tuple[np.ndarray, VideoRecord, dict[str, int], list[str]]:
        skips: Counter[str] = Counter()
        bad_files: list[str] = []
        record = self.records[index]
        for attempt in range(self.cfg.max_retries + 1):
            try:
                return pending(), record, dict(skips), bad_files
            except UnreadableError as e:
                skips[e.reason] += 1
                bad_files.append(e.path)
                last = e
            if attempt < self.cfg.max_retries:
                record = self.records[self.replacement(index, attempt)]
                pending = self.start_load(record)
        raise DataError(f"{self.annotation}: item {index} and its {self.cfg.max_retries} replacements are all "
                        f"unreadable (last: {last}); run `videoconvmae data check {self.annotation}`")

    def _require_one_readable(self) -> None:
        """Fail now, naming the annotation, when not a single item can be read (wrong root, wrong format)."""
        first_error = None
        for record in self.records:
            try:
                if self.is_image:
                    read_image(record.path, self.cfg.decode_timeout_s)
                else:
                    start_clip_read(record.path, self.cfg.decoder, lambda n, fps: [0], self.cfg.decode_timeout_s)()
                return
            except UnreadableError as e:
                first_error = first_error or e
        raise DataError(f"{self.annotation}: none of its {len(self.records)} items is readable (first: "
                        f"{first_error}); check data.root={self.cfg.root!r} and data.decoder={self.cfg.decoder}")


def _new_tensor(shape: tuple[int, ...]) -> torch.Tensor:
    """float32 ``shape``; in a DataLoader worker its storage is shared memory (as torch's default_collate does)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.float32)
    numel = int(np.prod(shape))
    storage = torch.empty(0)._typed_storage()._new_shared(numel, device="cpu")
    return torch.empty(0).new(storage).view(shape)


def _validate(cfg: DataConfig) -> None:
    checks = [
        (cfg.num_frames >= 1, "data.num_frames", "an integer >= 1", cfg.num_frames),
        (cfg.sampling_rate is None or cfg.sampling_rate >= 1, "data.sampling_rate", "an integer >= 1",
         cfg.sampling_rate),
        (cfg.num_segments is None or cfg.num_segments >= 1, "data.num_segments", "an integer >= 1 (or null)",
         cfg.num_segments),
        (cfg.input_size >= 1, "data.input_size", "a positive integer", cfg.input_size),
        (len(cfg.mean) == 3 and len(cfg.std) == 3 and min(cfg.std) > 0, "data.mean/std", "3 values each, std > 0",
         (cfg.mean, cfg.std)),
        (len(cfg.rrc_scale) == 2 and len(cfg.rrc_ratio) == 2 and len(cfg.pretrain_rrc_scale) == 2,
         "data.rrc_scale/rrc_ratio/pretrain_rrc_scale", "[low, high]", (cfg.rrc_scale, cfg.rrc_ratio)),
        (cfg.decoder in BACKENDS, "data.decoder", " | ".join(BACKENDS), cfg.decoder),
        (cfg.max_retries >= 0, "data.max_retries", "an integer >= 0", cfg.max_retries),
    ]
    for ok, key, expected, got in checks:
        if not ok:
            raise ConfigError(f"{key}: expected {expected}, got {got!r}")


def build_dataset(cfg: DataConfig, split: str, mode: str) -> ClipDataset:
    """The dataset of ``split`` (train | val) for ``mode`` (pretrain | finetune | linprobe)."""
    records, class_names = load_records(cfg, split)
    return ClipDataset(cfg, records, class_names, split, mode, annotation=annotation_path(cfg, split))


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Items -> ``{"input": [B*R, ...], "label": long [B*R], "index": long [B*R], "skips": {reason: n},
    "skipped_files": [path of each skipped read]}``."""
    inputs, labels, indices, skips, bad_files = [], [], [], Counter(), []
    for item in items:
        r = item.get("num_clips", 1)
        x = item["input"]
        inputs.append(x if r > 1 else x.unsqueeze(0))
        labels += [item["label"]] * r
        indices += [item["index"]] * r
        skips.update(item.get("skips", {}))
        bad_files += item.get("skipped_files", [])
    batch = items[0].get("_batch") if items else None
    if not (batch is not None and all(item.get("_batch") is batch for item in items)
            and sum(len(x) for x in inputs) == len(batch) and inputs[0].data_ptr() == batch.data_ptr()):
        batch = torch.cat(inputs)  # items that were not augmented into one batch tensor together
    return {"input": batch, "label": torch.tensor(labels, dtype=torch.long),
            "index": torch.tensor(indices, dtype=torch.long), "skips": {k: v for k, v in skips.items() if v},
            "skipped_files": bad_files}


class SkipStats:
    """Skipped reads per reason over a run; ``check`` fails past the allowed fraction of reads.

    fraction = skipped reads / (delivered items + skipped reads); items are the distinct ``index`` values of a
    batch (repeated-augmentation copies count once).
    """

    KEEP_FILES = 100  # the worst files kept in a checkpoint

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.files: Counter[str] = Counter()  # skipped reads per file
        self.items = 0

    def update(self, batch: dict[str, Any]) -> None:
        self.counts.update({k: int(v) for k, v in batch.get("skips", {}).items()})
        self.files.update(batch.get("skipped_files", []))
        self.items += int(torch.unique(batch["index"]).numel())

    @property
    def skipped(self) -> int:
        return sum(self.counts.values())

    @property
    def fraction(self) -> float:
        total = self.items + self.skipped
        return self.skipped / total if total else 0.0

    def as_dict(self) -> dict[str, int]:
        """``{"items": n, "skipped": n, "skipped/<reason>": n}`` for the metrics log."""
        return {"items": self.items, "skipped": self.skipped,
                **{f"skipped/{k}": self.counts[k] for k in sorted(self.counts)}}

    def summary(self, items: int | None = None, skipped: int | None = None) -> str:
        """'skipped S of N reads (P%: reason: n, ...)' of this process, or of the given run totals."""
        items = self.items if items is None else items
        skipped = self.skipped if skipped is None else skipped
        reasons = ", ".join(f"{k}: {self.counts[k]}" for k in SKIP_REASONS + tuple(
            sorted(set(self.counts) - set(SKIP_REASONS))) if self.counts[k])
        fraction = skipped / (items + skipped) if items + skipped else 0.0
        return (f"skipped {skipped} of {items + skipped} reads ({100 * fraction:.1f}%"
                + (f": {reasons})" if reasons else ")"))

    def check(self, max_fraction: float, min_reads: int = 0, totals: tuple[int, int] | None = None) -> None:
        """Raise DataError when the skipped fraction exceeds ``max_fraction`` (once ``min_reads`` reads were seen;
        pass e.g. 100 when checking every step so one early bad batch does not end a run). ``totals`` =
        (items, skipped) over all processes when the caller summed them; default: this process's counts."""
        items, skipped = totals if totals is not None else (self.items, self.skipped)
        reads = items + skipped
        if reads >= min_reads and reads and skipped / reads > max_fraction:
            worst = ", ".join(f"{p} ({n}x)" for p, n in self.files.most_common(3))
            raise DataError(f"unreadable data: {self.summary(items, skipped)} exceeds data.max_skip_fraction="
                            f"{max_fraction}"
                            f"{f'; worst: {worst}' if worst else ''}; run `videoconvmae data check ANNOTATION` "
                            "to list the bad files")

    def state_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "items": self.items,
                "files": dict(self.files.most_common(self.KEEP_FILES))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts, self.items = Counter(state.get("counts", {})), int(state.get("items", 0))
        self.files = Counter(state.get("files", {}))

