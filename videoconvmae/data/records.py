"""Annotation formats -> ``(list[VideoRecord], class_names)``.

- Kinetics-400 official CSV (header ``label,youtube_id,time_start,time_end,split``): the video is
  ``<root>/<split dir>/<youtube_id>_<start:06d>_<end:06d>.mp4`` (``data.k400_label_dirs`` adds a ``<label>/``
  level); label ids are the class names in sorted order, taken from the TRAIN annotation so train and val agree
  (or from ``data.labels_file``).
- Something-Something-v2 JSON (``train.json`` / ``validation.json`` + ``labels.json`` name -> id): the class of
  an entry is its ``template`` with the square brackets removed ("Putting [something] on [something]" ->
  "Putting something on something"), as the 20BN tooling and VideoMAE map it; the video is ``<root>/<id>.webm``.
- The common list form ``<path> <label id>`` per line (the label is the last field, so paths may hold spaces;
  relative paths are under ``data.root``) for either dataset.
- ImageNet-style folders ``<annotation>/<class>/<image>``: classes are the sorted folder names.

Every problem with an annotation raises ``AnnotationError``: one line naming the file (and line / entry).
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from videoconvmae.artifacts import atomic_write
from videoconvmae.data.config import DataConfig
from videoconvmae.errors import ConfigError

K400_HEADER = ("label", "youtube_id", "time_start", "time_end")
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")


class AnnotationError(ConfigError):
    """A missing or malformed annotation file; the message is one line naming the file."""


@dataclass(frozen=True)
class VideoRecord:
    video_id: str  # the annotation's id (K400 `<ytid>_<start>_<end>`, SSV2 id, list / image path), unique
    path: str  # absolute or root-joined path of the video / image file
    label: int  # class id


def annotation_path(cfg: DataConfig, split: str) -> str:
    if split not in ("train", "val"):
        raise ValueError(f"split: expected train | val, got {split!r}")
    path = cfg.train_annotation if split == "train" else cfg.val_annotation
    if not path:
        raise AnnotationError(f"data.{split}_annotation is empty: set it to the {split} annotation file")
    if not os.path.exists(path):
        raise AnnotationError(f"data.{split}_annotation: {path}: no such file or folder")
    return path


def load_records(cfg: DataConfig, split: str) -> tuple[list[VideoRecord], list[str]]:
    """Records of ``split`` ("train" | "val") and the class names (index = label id)."""
    path = annotation_path(cfg, split)
    if cfg.dataset == "imagefolder":
        records, names = _read_image_folder(path)
    elif cfg.dataset == "k400":
        records, names = (_read_k400_csv(cfg, path) if _is_k400_csv(path) else _read_list(cfg, path, split))
    elif cfg.dataset == "ssv2":
        records, names = (_read_ssv2_json(cfg, path) if path.endswith(".json") else _read_list(cfg, path, split))
    else:
        raise AnnotationError(f"data.dataset: expected k400 | ssv2 | imagefolder, got {cfg.dataset!r}")
    if not records:
        raise AnnotationError(f"{path}: no items")
    dup = next((i for i, n in Counter(r.video_id for r in records).items() if n > 1), None)
    if dup is not None:
        raise AnnotationError(f"{path}: video id {dup!r} appears more than once")
    if cfg.limit_items is not None:
        records = records[: cfg.limit_items]
    return records, names


def save_class_names(class_names: list[str], path: str | os.PathLike) -> Path:
    """Write ``{"class_names": [...], "class_to_idx": {name: id}}`` as JSON (atomically)."""
    return atomic_write(path, json.dumps({"class_names": class_names,
                                          "class_to_idx": {n: i for i, n in enumerate(class_names)}}, indent=1))


def _resolve(root: str, path: str) -> str:
    return path if os.path.isabs(path) or not root else os.path.join(root, path)


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8-sig")  # -sig: a BOM (Excel, Windows tools) is dropped
    except (OSError, UnicodeDecodeError) as e:
        raise AnnotationError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from None


def _is_k400_csv(path: str) -> bool:
    try:
        with open(path, encoding="utf-8-sig") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError) as e:
        raise AnnotationError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from None
    return tuple(c.strip() for c in first.split(",")[:4]) == K400_HEADER


def _labels_file_names(path: str) -> list[str]:
    """Class names from a labels file: JSON {name: id} (SSV2 labels.json), JSON [names], or one name per line."""
    text = _read_text(path)
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise AnnotationError(f"{path}: not valid JSON ({e})") from None
        if isinstance(data, list):
            return [str(n) for n in data]
        if not isinstance(data, dict):
            raise AnnotationError(f"{path}: expected a JSON object name -> id or a list of names")
        try:
            pairs = sorted((int(i), n) for n, i in data.items())
        except (TypeError, ValueError):
            raise AnnotationError(f"{path}: expected integer ids (as numbers or strings) for every name") from None
        if [i for i, _ in pairs] != list(range(len(pairs))):
            raise AnnotationError(f"{path}: ids must be 0..{len(pairs) - 1} without gaps")
        return [n for _, n in pairs]
    return [line.strip() for line in text.splitlines() if line.strip()]


def _k400_rows(path: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    for n, row in enumerate(rows, start=2):
        if any(not (row.get(k) or "").strip() for k in K400_HEADER):
            raise AnnotationError(f"{path}:{n}: expected {','.join(K400_HEADER)},split values, got {row}")
    return rows


def _k400_class_names(cfg: DataConfig, path: str) -> list[str]:
    if cfg.labels_file:
        return _labels_file_names(cfg.labels_file)
    source = cfg.train_annotation if cfg.train_annotation and os.path.isfile(cfg.train_annotation) else path
    if not _is_k400_csv(source):
        source = path
    return sorted({row["label"].strip() for row in _k400_rows(source)})


def _read_k400_csv(cfg: DataConfig, path: str) -> tuple[list[VideoRecord], list[str]]:
    names = _k400_class_names(cfg, path)
    to_id = {n: i for i, n in enumerate(names)}
    records = []
    for n, row in enumerate(_k400_rows(path), start=2):
        label = row["label"].strip()
        if label not in to_id:
            raise AnnotationError(f"{path}:{n}: label {label!r} is not a class of the train annotation")
        try:
            start, end = int(float(row["time_start"])), int(float(row["time_end"]))
        except ValueError:
            raise AnnotationError(f"{path}:{n}: time_start / time_end must be numbers, got {row}") from None
        video_id = f"{row['youtube_id'].strip()}_{start:06d}_{end:06d}"
        folder = cfg.k400_split_dir or (row.get("split") or "").strip()
        parts = [cfg.root, folder, label if cfg.k400_label_dirs else "", video_id + cfg.k400_video_ext]
        records.append(VideoRecord(video_id, os.path.join(*[p for p in parts if p]), to_id[label]))
    return records, names


def _read_ssv2_json(cfg: DataConfig, path: str) -> tuple[list[VideoRecord], list[str]]:
    labels_file = cfg.labels_file or os.path.join(os.path.dirname(path), "labels.json")
    if not os.path.isfile(labels_file):
        raise AnnotationError(f"{path}: SSV2 needs labels.json (set data.labels_file; {labels_file} not found)")
    names = _labels_file_names(labels_file)
    to_id = {n: i for i, n in enumerate(names)}
    try:
        entries = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(entries, list):
        raise AnnotationError(f"{path}: expected a JSON list of {{id, label, template, placeholders}}")
    records = []
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or "id" not in entry or "template" not in entry:
            raise AnnotationError(f"{path}: entry {n}: expected keys id and template (test.json has no labels)")
        name = str(entry["template"]).replace("[", "").replace("]", "")
        if name not in to_id:
            raise AnnotationError(f"{path}: entry {n} (id {entry['id']}): class {name!r} not in {labels_file}")
        vid = str(entry["id"])
        records.append(VideoRecord(vid, _resolve(cfg.root, vid + cfg.ssv2_video_ext), to_id[name]))
    return records, names


def _parse_list(path: str) -> list[tuple[str, int]]:
    items = []
    for n, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.strip().rsplit(None, 1)
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit() or int(fields[1]) < 0:
            raise AnnotationError(f"{path}:{n}: expected '<path> <label id>', got {line.strip()!r}")
        items.append((fields[0], int(fields[1])))
    return items


def _read_list(cfg: DataConfig, path: str, split: str) -> tuple[list[VideoRecord], list[str]]:
    items = _parse_list(path)
    if not items:
        raise AnnotationError(f"{path}: no items")
    if cfg.labels_file:
        names = _labels_file_names(cfg.labels_file)
    else:  # ids only: the classes are the train list's ids, which must be 0..K-1 without a gap
        train = cfg.train_annotation if split != "train" and os.path.isfile(cfg.train_annotation or "") else None
        train_items = _parse_list(train) if train else items
        ids = sorted({label for _, label in train_items})
        if ids != list(range(len(ids))):
            gap = next(i for i in range(len(ids) + 1) if i not in ids)
            rel, top = max(((r, lab) for r, lab in train_items), key=lambda item: item[1])
            raise AnnotationError(f"{train or path}: label ids are not 0..K-1 (no item has id {gap}; the largest is "
                                  f"{top}, of {rel!r}); fix the label or declare the classes with data.labels_file")
        names = [str(i) for i in ids]
    for rel, label in items:
        if label >= len(names):
            raise AnnotationError(f"{path}: label {label} of {rel!r} is not a class of the train list (ids "
                                  f"0..{len(names) - 1})")
    return [VideoRecord(rel, _resolve(cfg.root, rel), label) for rel, label in items], names


def _read_image_folder(path: str) -> tuple[list[VideoRecord], list[str]]:
    if not os.path.isdir(path):
        raise AnnotationError(f"{path}: imagefolder annotation must be a folder of <class>/<image> files")
    names = sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise AnnotationError(f"{path}: no class folders")
    records = []
    for label, name in enumerate(names):
        for dirpath, _, files in sorted(os.walk(os.path.join(path, name), followlinks=True)):
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    full = os.path.join(dirpath, f)
                    records.append(VideoRecord(os.path.relpath(full, path), full, label))
    return records, names
