"""``videoconvmae eval merge``: one report from the output folders of the shards of one evaluation.

Refuses, naming the folder, when a shard is missing or given twice, when two shards disagree on what was
evaluated (checkpoint hash, config hash, dataset size, protocol), or when a video appears in two shards.
The merged metrics are computed from the concatenated predictions, so they equal an unsharded run's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from videoconvmae.errors import one_line
from videoconvmae.eval.metrics import PREDICTIONS_NPZ, load_predictions
from videoconvmae.eval.report import read_report, write_report


class MergeError(ValueError):
    """Shard outputs that do not form one complete evaluation; the message is one line."""


def _check_same_run(reports: list[tuple[Path, dict]]) -> None:
    first_path, first = reports[0]
    for path, rep in reports[1:]:
        for key in sorted(set(first["run"]) | set(rep["run"])):
            if key == "checkpoint":  # the same weights may sit at different paths; the hash decides
                continue
            a, b = first["run"].get(key), rep["run"].get(key)
            if a != b:
                raise MergeError(f"{path}: shard does not match {first_path}: run.{key} is {b!r} there, {a!r} here")
        if rep["class_names"] != first["class_names"]:
            raise MergeError(f"{path}: class names differ from {first_path}")


def _check_complete(reports: list[tuple[Path, dict]]) -> None:
    count = reports[0][1]["shard"]["count"]
    seen: dict[int, Path] = {}
    for path, rep in reports:
        index = rep["shard"]["index"]
        if rep["shard"]["count"] != count:
            raise MergeError(f"{path}: shard {index}/{rep['shard']['count']} is not one of {count} shards")
        if index in seen:
            raise MergeError(f"{path}: shard {index}/{count} given twice (also {seen[index]})")
        seen[index] = path
    missing = sorted(set(range(count)) - set(seen))
    if missing:
        raise MergeError(f"missing shard(s) {', '.join(f'{i}/{count}' for i in missing)} "
                         f"(got {len(seen)} of {count}: {', '.join(str(p) for p in seen.values())})")


def _check_out_dir(out: Path, shards: list[Path]) -> None:
    """The merged report must not overwrite a shard's own outputs."""
    if any(out.resolve() == p.resolve() for p in shards):
        raise MergeError(f"eval merge --out {out}: that is a shard folder (its report would be overwritten); "
                         "choose another folder")
    try:
        count = read_report(out)["shard"]["count"] if (out / "metrics.json").is_file() else 1
    except Exception:  # unreadable: not a shard report we could recognise; the merge may replace it
        count = 1
    if count > 1:
        raise MergeError(f"eval merge --out {out}: it holds the report of a shard of {count}; choose another folder")


def merge_shards(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike | None = None) -> dict:
    """Merge shard output folders into ``out_dir`` (default: the parent of the first shard); the summary."""
    if not paths:
        raise MergeError("eval merge: no shard folders given")
    reports = [(Path(p), read_report(p)) for p in paths]
    _check_same_run(reports)
    _check_complete(reports)
    out = Path(out_dir) if out_dir is not None else reports[0][0].parent
    _check_out_dir(out, [p for p, _ in reports])
    reports.sort(key=lambda pr: pr[1]["shard"]["index"])

    ids: list[str] = []
    labels, scores, unreadable = [], [], []
    owner: dict[str, Path] = {}
    for path, rep in reports:
        try:
            v, y, s = load_predictions(path / PREDICTIONS_NPZ)
        except Exception as e:  # a truncated / foreign file: zipfile, numpy and KeyError all differ
            raise MergeError(f"{path / PREDICTIONS_NPZ}: cannot read the predictions "
                             f"({one_line(e, with_type=True)}); rerun that shard") from None
        if len(v) != rep["num_evaluated"] or len(v) + len(rep["unreadable"]) != rep["num_assigned"]:
            raise MergeError(f"{path}: {PREDICTIONS_NPZ} holds {len(v)} predictions, metrics.json says "
                             f"{rep['num_evaluated']} evaluated")
        for vid in [*v, *(u["video_id"] for u in rep["unreadable"])]:
            if vid in owner:
                raise MergeError(f"{path}: video id {vid!r} is also in {owner[vid]} (overlapping shards)")
            owner[vid] = path
        ids += v
        labels.append(y)
        scores.append(s)
        unreadable += rep["unreadable"]

    run = reports[0][1]["run"]
    total = run.get("num_total")
    if total is not None and len(owner) != total:
        raise MergeError(f"the shards cover {len(owner)} items, the evaluation set has {total}")
    k = len(reports[0][1]["class_names"])
    summary = write_report(
        out, video_ids=ids, labels=np.concatenate(labels) if labels else np.zeros(0, np.int64),
        scores=np.concatenate(scores) if scores else np.zeros((0, k), np.float32),
        class_names=reports[0][1]["class_names"], unreadable=unreadable, run=run,
        shard={"index": 0, "count": 1, "merged_from": [str(p) for p, _ in reports]},
        confusion_max_classes=reports[0][1]["options"]["confusion_max_classes"])
    summary["out_dir"] = str(out)
    return summary
