"""Aggregation of known per-view logits and the metrics computed from it, against hand-computed values."""

import csv
import math

import numpy as np
import pytest
import torch

from videoconvmae.eval.metrics import (
    aggregate,
    classification_metrics,
    load_predictions,
    save_predictions,
    write_confusion_png,
    write_per_class_csv,
)

# 5 videos x 2 views x 7 classes.
LOGITS = torch.tensor([
    [[20, 0, 0, 0, 0, 0, 0], [0, 30, 29, 0, 0, 0, 0]],  # softmax: ~(.5, .366, .134) -> 0; logits (10, 15, 14.5) -> 1
    [[5, 4, 3, 2, 1, 0, -1], [5, 4, 3, 2, 1, 0, -1]],  # label 6 ranks last in both modes
    [[0, 0, 0, 1, 0, 0, 0], [0, 0, 0, 3, 0, 0, 0]],  # 3 in both modes
    [[0, 0, 1, 0, 0, 0, 2], [0, 0, 1, 0, 0, 0, 0]],  # softmax: p6 .302 > p2 .246; logits: 2 and 6 tie at 1 -> 2
    [[0, 0, 0, 0, 0, 0, 9], [0, 0, 0, 0, 0, 0, 9]],  # 6, then zeros in class order: 0, 1, 2, 3
], dtype=torch.float32)
LABELS = np.array([0, 6, 3, 2, 3])


def test_softmax_aggregation_values():
    scores = aggregate(LOGITS, "softmax")
    p = scores[0]
    assert math.isclose(p[0], 0.5, abs_tol=1e-6)
    assert math.isclose(p[1], 0.5 / (1 + math.exp(-1)), rel_tol=1e-5)
    assert math.isclose(p[2], 0.5 * math.exp(-1) / (1 + math.exp(-1)), rel_tol=1e-5)
    torch.testing.assert_close(scores.sum(1), torch.ones(5))
    e = math.e
    assert math.isclose(scores[3, 6], (e ** 2 / (e ** 2 + e + 5) + 1 / (e + 6)) / 2, rel_tol=1e-5)
    assert math.isclose(scores[3, 2], (e / (e ** 2 + e + 5) + e / (e + 6)) / 2, rel_tol=1e-5)
    torch.testing.assert_close(aggregate(LOGITS, "logits")[0, :3], torch.tensor([10.0, 15.0, 14.5]))


def test_known_logits_give_hand_computed_metrics():
    soft = classification_metrics(aggregate(LOGITS, "softmax").numpy(), LABELS, 7)
    assert soft["pred"].tolist() == [0, 0, 3, 6, 6]
    assert soft["top1"] == 40.0 and soft["top5"] == 80.0  # right: videos 0, 2; top-5 misses only video 1
    assert soft["mean_class_acc"] == pytest.approx(100 * (1 + 0 + 0.5 + 0) / 4)  # classes 0, 6, 3, 2
    assert soft["num_videos"] == 5

    logit = classification_metrics(aggregate(LOGITS, "logits").numpy(), LABELS, 7)
    assert logit["pred"].tolist() == [1, 0, 3, 2, 6]
    assert logit["top1"] == 40.0 and logit["top5"] == 80.0  # right: videos 2, 3
    assert logit["mean_class_acc"] == pytest.approx(100 * (0 + 0 + 0.5 + 1) / 4)

    c = soft["confusion"]
    assert c.sum() == 5 and c[0, 0] == 1 and c[6, 0] == 1 and c[3, 3] == 1 and c[2, 6] == 1 and c[3, 6] == 1
    assert soft["per_class"]["count"].tolist() == [1, 0, 1, 2, 0, 0, 1]
    assert soft["per_class"]["correct5"].tolist() == [1, 0, 1, 2, 0, 0, 0]


def test_top5_with_fewer_than_five_classes_and_empty_input():
    m = classification_metrics(np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3]]), np.array([2, 2]), 3)
    assert m["top1"] == 0.0 and m["top5"] == 100.0
    empty = classification_metrics(np.zeros((0, 3)), np.zeros(0, dtype=int), 3)
    assert empty["num_videos"] == 0 and math.isnan(empty["top1"])


def test_files(tmp_path):
    soft = classification_metrics(aggregate(LOGITS, "softmax").numpy(), LABELS, 7)
    names = [f"class {i}" for i in range(7)]
    with open(write_per_class_csv(tmp_path / "pc.csv", soft["per_class"], names)) as f:
        rows = list(csv.DictReader(f))
    assert rows[3] == {"class_id": "3", "class_name": "class 3", "num_videos": "2", "top1": "50.0000",
                       "top5": "100.0000"}
    assert rows[1]["top1"] == ""  # a class without videos has no accuracy
    png = write_confusion_png(tmp_path / "c.png", soft["confusion"], names)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scores = aggregate(LOGITS, "softmax").numpy()
    save_predictions(tmp_path / "p.npz", ["a/x", "b/x", "c", "d", "e"], LABELS, scores)
    ids, labels, back = load_predictions(tmp_path / "p.npz")
    assert ids == ["a/x", "b/x", "c", "d", "e"] and labels.tolist() == LABELS.tolist()
    assert np.array_equal(back, scores)
