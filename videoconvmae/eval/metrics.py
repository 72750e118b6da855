"""View aggregation and classification metrics, and the files they are written to.

Scores are ranked with a stable sort on ``-score``, so ties go to the lower class id: the same scores give
the same ranks whether they were computed in one run or merged from shards.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from videoconvmae.artifacts import atomic_write, write_csv

PREDICTIONS_NPZ = "predictions.npz"


def aggregate(view_logits: torch.Tensor, mode: str = "softmax") -> torch.Tensor:
    """One score vector per video from its views.

    view_logits: [N, V, K] logits of the V views of each of N videos. ``softmax``: mean over views of the
    per-view probabilities (what the VideoMAE protocol reports); ``logits``: mean of the raw logits.
    Returns float32 [N, K].
    """
    x = view_logits.float()
    if mode == "softmax":
        return x.softmax(dim=-1).mean(dim=1)
    if mode == "logits":
        return x.mean(dim=1)
    raise ValueError(f"eval.aggregation: expected softmax|logits, got {mode!r}")


def ranked_classes(scores: np.ndarray, k: int) -> np.ndarray:
    """[N, min(k, K)] class ids by decreasing score (ties: lower id first)."""
    order = np.argsort(-np.asarray(scores), axis=1, kind="stable")
    return order[:, :k]


def classification_metrics(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """top-1 / top-5 / mean per-class accuracy (in %), per-class counts and the confusion matrix.

    scores: [N, K] aggregated scores; labels: [N] int. Mean per-class accuracy averages the top-1 recall of
    the classes that have at least one video.
    """
    scores, labels = np.asarray(scores), np.asarray(labels, dtype=np.int64)
    n = len(labels)
    top = ranked_classes(scores, 5) if n else np.zeros((0, 1), dtype=np.int64)
    pred = top[:, 0]
    hit1 = pred == labels
    hit5 = (top == labels[:, None]).any(axis=1)
    count = np.bincount(labels, minlength=num_classes)
    correct1 = np.bincount(labels[hit1], minlength=num_classes)
    correct5 = np.bincount(labels[hit5], minlength=num_classes)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    seen = count > 0
    return {
        "num_videos": int(n),
        "top1": 100.0 * int(hit1.sum()) / n if n else float("nan"),
        "top5": 100.0 * int(hit5.sum()) / n if n else float("nan"),
        "mean_class_acc": float(100.0 * (correct1[seen] / count[seen]).mean()) if seen.any() else float("nan"),
        "per_class": {"count": count, "correct1": correct1, "correct5": correct5},
        "confusion": confusion,
        "pred": pred,
    }


def write_per_class_csv(path: str | os.PathLike, per_class: dict, class_names: Sequence[str]) -> Path:
    rows = [["class_id", "class_name", "num_videos", "top1", "top5"]]
    for c, name in enumerate(class_names):
        n = int(per_class["count"][c])
        acc = lambda key: f"{100.0 * int(per_class[key][c]) / n:.4f}" if n else ""  # noqa: B023
        rows.append([c, name, n, acc("correct1"), acc("correct5")])
    return write_csv(path, rows)
    return path


def write_confusion_png(path: str | os.PathLike, confusion: np.ndarray, class_names: Sequence[str]) -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    rows = confusion.sum(axis=1, keepdims=True)
    norm = np.divide(confusion, rows, out=np.zeros(confusion.shape, dtype=float), where=rows > 0)
    k = len(class_names)
    side = min(4 + 0.25 * k, 40)
    fig, ax = plt.subplots(figsize=(side, side))
    im = ax.imshow(norm, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= 40:
        ax.set_xticks(range(k), labels=list(class_names), rotation=90, fontsize=7)
        ax.set_yticks(range(k), labels=list(class_names), fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return path


def save_predictions(path: str | os.PathLike, video_ids: Sequence[str], labels: np.ndarray,
                     scores: np.ndarray) -> Path:
    """The mergeable predictions: annotation video ids, labels and aggregated scores [N, K] float32."""
    return atomic_write(path, lambda f: np.savez(f, video_id=np.array(list(video_ids), dtype=str),
                                                 label=np.asarray(labels, dtype=np.int64),
                                                 scores=np.asarray(scores, dtype=np.float32)))


def load_predictions(path: str | os.PathLike) -> tuple[list[str], np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return [str(v) for v in z["video_id"]], z["label"].astype(np.int64), z["scores"].astype(np.float32)


def write_predictions_csv(path: str | os.PathLike, video_ids: Sequence[str], labels: np.ndarray,
                          scores: np.ndarray, class_names: Sequence[str]) -> Path:
    """A human-readable view of the predictions: id, label, top-5 classes and the top-1 score."""
    top = ranked_classes(scores, 5) if len(video_ids) else np.zeros((0, 1), dtype=np.int64)
    return write_csv(path, [["video_id", "label", "label_name", "pred", "pred_name", "pred_score", "top5"],
                            *([vid, int(y), class_names[int(y)], int(t[0]), class_names[int(t[0])],
                               f"{float(s[t[0]]):.6g}", " ".join(str(int(c)) for c in t)]
                              for vid, y, t, s in zip(video_ids, labels, top, scores))])
