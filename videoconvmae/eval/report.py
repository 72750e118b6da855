"""The files an evaluation (one shard or a merge) leaves in its output folder.

``predictions.npz`` (what ``eval merge`` reads), ``predictions.csv``, ``per_class.csv``, ``confusion.png``
and ``metrics.json``: the metrics, the headline, the unreadable items, and ``run`` (what every shard of
one evaluation must share: checkpoint hash, config hash, dataset size, protocol) plus ``shard``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from videoconvmae.artifacts import atomic_write
from videoconvmae.eval.metrics import (
    PREDICTIONS_NPZ,
    classification_metrics,
    save_predictions,
    write_confusion_png,
    write_per_class_csv,
    write_predictions_csv,
)

METRICS_JSON = "metrics.json"


def headline(metrics: dict, num_unreadable: int, unit: str, protocol: str) -> str:
    n = metrics["num_videos"]
    skipped = f"; {num_unreadable} unreadable {unit} not counted" if num_unreadable else ""
    return (f"top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  mean-class {metrics['mean_class_acc']:.2f}%"
            f"  over {n} {unit}{skipped} ({protocol})")


def write_json(path: str | os.PathLike, data: dict) -> Path:
    return atomic_write(path, json.dumps(data, indent=1) + "\n")


def write_report(out_dir: str | os.PathLike, *, video_ids: Sequence[str], labels: np.ndarray, scores: np.ndarray,
                 class_names: Sequence[str], unreadable: list[dict], run: dict, shard: dict,
                 confusion_max_classes: int = 1000) -> dict:
    """Compute the metrics of ``scores`` [N, K] against ``labels`` [N] and write every output file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    k = len(class_names)
    m = classification_metrics(scores, labels, k)
    files = {"predictions": str(save_predictions(out / PREDICTIONS_NPZ, video_ids, labels, scores)),
             "predictions_csv": str(write_predictions_csv(out / "predictions.csv", video_ids, labels, scores,
                                                          class_names)),
             "per_class": str(write_per_class_csv(out / "per_class.csv", m["per_class"], class_names))}
    if 0 < k <= confusion_max_classes:
        files["confusion"] = str(write_confusion_png(out / "confusion.png", m["confusion"], class_names))
    unit = "images" if run.get("mode") == "image" else "videos"
    summary = {
        "headline": headline(m, len(unreadable), unit, run.get("protocol", "")),
        "top1": m["top1"], "top5": m["top5"], "mean_class_acc": m["mean_class_acc"],
        "num_evaluated": m["num_videos"], "num_unreadable": len(unreadable),
        "num_assigned": m["num_videos"] + len(unreadable),
        "run": run, "shard": shard, "options": {"confusion_max_classes": confusion_max_classes},
        "class_names": list(class_names), "unreadable": unreadable, "files": files,
    }
    files["metrics"] = str(out / METRICS_JSON)
    write_json(out / METRICS_JSON, summary)
    return summary


def read_report(folder: str | os.PathLike) -> dict:
    path = Path(folder) / METRICS_JSON
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing (not an eval output folder, or the shard did not finish)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg})") from None
