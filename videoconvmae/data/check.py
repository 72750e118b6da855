"""``videoconvmae data check ANNOTATION``: decode every item once, report the unreadable ones.

What to run before a 30-hour job: each item is opened and a clip spanning the WHOLE video is decoded
(``frames`` uniformly spaced indices including the first and the last frame, so a truncated file fails here
and not at hour 20), images are fully decoded. Items are checked in worker processes with a tqdm bar; the
report is a TSV ``path<TAB>reason<TAB>detail`` of the unreadable items.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from videoconvmae.artifacts import atomic_write
from videoconvmae.data.config import DataConfig
from videoconvmae.data.records import IMAGE_EXTENSIONS, VideoRecord, load_records
from videoconvmae.data.video import UnreadableError, read_clip


@dataclass
class CheckResult:
    total: int  # items in the annotation
    bad: list[tuple[str, str, str]]  # (path, reason, detail) of the unreadable items
    report: Path  # where the TSV report was written

    @property
    def counts(self) -> Counter:
        return Counter(reason for _, reason, _ in self.bad)


def guess_dataset(annotation: str) -> str:
    """imagefolder for a folder, ssv2 for a .json, k400 otherwise (official CSV or `<path> <label>` list)."""
    if os.path.isdir(annotation):
        return "imagefolder"
    return "ssv2" if annotation.endswith(".json") else "k400"


def _check_one(record: VideoRecord, decoder: str, frames: int, timeout_s: float) -> tuple[str, str, str] | None:
    from videoconvmae.data.dataset import read_image

    def whole_span(num_frames: int, fps: float) -> np.ndarray:
        return np.unique(np.linspace(0, num_frames - 1, num=min(frames, num_frames)).round().astype(np.int64))

    try:
        if record.path.lower().endswith(IMAGE_EXTENSIONS):
            read_image(record.path, timeout_s)
        else:
            read_clip(record.path, decoder, whole_span, timeout_s)
    except UnreadableError as e:
        return record.path, e.reason, e.detail
    return None


def check_annotation(cfg: DataConfig, annotation: str, report: str | os.PathLike | None = None,
                     workers: int = 1, frames: int = 16, progress: bool = True) -> CheckResult:
    """Decode every item of ``annotation`` once; write the TSV report; return what was found."""
    from tqdm import tqdm

    cfg.train_annotation = annotation
    records, _ = load_records(cfg, "train")
    fn = partial(_check_one, decoder=cfg.decoder, frames=frames, timeout_s=cfg.decode_timeout_s)
    bar = tqdm(total=len(records), desc=f"check {Path(annotation).name}", unit="item", disable=not progress)
    bad = []
    if workers > 1:
        with get_context("fork").Pool(workers) as pool:  # fork: no re-import per worker
            for result in pool.imap(fn, records, chunksize=8):
                bad += [result] if result else []
                bar.update(1)
    else:
        for record in records:
            result = fn(record)
            bad += [result] if result else []
            bar.update(1)
    bar.close()
    report = Path(report or f"{annotation.rstrip('/')}.check.tsv")
    atomic_write(report, "path\treason\tdetail\n" + "".join(f"{p}\t{r}\t{d}\n" for p, r, d in bad))
    return CheckResult(len(records), bad, report)
