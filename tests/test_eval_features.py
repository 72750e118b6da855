"""`videoconvmae features`: one embedding per video from one decode, sharded like eval, any of our checkpoints."""

import csv

import numpy as np
import pytest
import torch

from videoconvmae.cli import main
from videoconvmae.config import load_config, to_dict
from videoconvmae.data.records import load_records
from videoconvmae.data.transforms import normalize
from videoconvmae.data.views import ViewsDataset
from videoconvmae.eval.features import linear_probe, read_features
from videoconvmae.eval.multiview import view_spec
from videoconvmae.models import build_model

VIEWS = ["eval.num_temporal_views=2", "eval.num_spatial_views=2"]


def tiny_cfg(synth, task="pretrain"):
    k = synth / "k400"
    return load_config(None, [f"task={task}", "model.arch=videoconvmae_tiny", "model.mask_ratio=0.75",
                              f"data.root={k}", f"data.train_annotation={k}/train.csv",
                              f"data.val_annotation={k}/val.csv", "data.num_frames=4", "data.sampling_rate=2",
                              "data.input_size=32", "data.short_side_size=32", "data.num_workers=0",
                              "train.progress=false"])


@pytest.fixture(scope="module")
def pretrain_weights(synth_root, tmp_path_factory):
    """A (random-init) tiny pretrain model in the exported weights.pt format: decoder, norm, no fc_norm."""
    cfg = tiny_cfg(synth_root)
    torch.manual_seed(0)
    model = build_model(cfg.model, "pretrain")
    path = tmp_path_factory.mktemp("pre") / "weights.pt"
    torch.save({"model": model.state_dict(), "config": to_dict(cfg)}, path)
    return path, cfg


def features(ckpt, annotation, out, *words):
    assert main(["features", str(ckpt), str(annotation), "--out", str(out), *VIEWS, *words]) == 0


def test_one_embedding_per_video_equal_to_the_encoders_features(pretrain_weights, synth_root, tmp_path):
    ckpt, cfg = pretrain_weights
    val = synth_root / "k400" / "val.csv"
    features(ckpt, val, tmp_path, "--per-view", "--per-clip")
    feats, rows = read_features(tmp_path)
    records, _ = load_records(cfg.data, "val")
    assert feats.shape == (10, 64) and feats.dtype == np.float32
    assert [r["video_id"] for r in rows] == [r.video_id for r in records]  # annotation order, one per video
    assert [int(r["label"]) for r in rows] == [r.label for r in records]
    views, clips = np.load(tmp_path / "views.npy"), np.load(tmp_path / "clips.npy")
    assert views.shape == (10, 4, 64) and clips.shape == (10, 2, 64)
    np.testing.assert_allclose(clips, views.reshape(10, 2, 2, 64).mean(2), rtol=0, atol=1e-6)
    np.testing.assert_allclose(feats, views.mean(1), rtol=0, atol=1e-6)
    # the same numbers by hand: the classifier with the pretrain encoder, its pooled features of video 3's views
    cls = build_model(cfg.model, "finetune", 1).eval()
    state = torch.load(ckpt, weights_only=True)["model"]
    missing, _ = cls.load_state_dict(state, strict=False)
    assert all(k.startswith(("fc_norm.", "head.")) for k in missing)
    spec_cfg = load_config(None, [*[f"data.{k}={v}" for k, v in (("num_frames", 4), ("sampling_rate", 2),
                                                                    ("input_size", 32), ("short_side_size", 32))],
                                  *VIEWS])
    item = ViewsDataset(records, [3], view_spec(spec_cfg))[0]
    with torch.no_grad():
        expected = cls.forward_features(normalize(item["views"], cfg.data.mean, cfg.data.std))
    np.testing.assert_allclose(views[3], expected.numpy(), rtol=1e-5, atol=1e-5)
    assert np.linalg.matrix_rank(feats) > 1  # different videos, different embeddings


def test_three_shards_concatenate_to_the_unsharded_run(pretrain_weights, synth_root, tmp_path):
    ckpt, _ = pretrain_weights
    val = synth_root / "k400" / "val.csv"
    features(ckpt, val, tmp_path / "full")
    parts = []
    for i in range(3):
        features(ckpt, val, tmp_path / "sharded", f"eval.shard={i}/3", "eval.batch_videos=2")
        parts.append(read_features(tmp_path / "sharded" / f"shard-{i}-of-3"))
    full, full_rows = read_features(tmp_path / "full")
    assert [len(p[0]) for p in parts] == [3, 3, 4]
    assert [r["video_id"] for p in parts for r in p[1]] == [r["video_id"] for r in full_rows]
    np.testing.assert_allclose(np.concatenate([p[0] for p in parts]), full, rtol=1e-6, atol=1e-6)


def test_weights_that_do_not_fit_are_one_line(pretrain_weights, synth_root, tmp_path, capsys):
    ckpt, cfg = pretrain_weights
    saved = torch.load(ckpt, weights_only=True)
    saved["model"]["blocks3.0.attn.qkv.weight"] = torch.zeros(3, 3)
    torch.save(saved, tmp_path / "bad.pt")
    assert main(["features", str(tmp_path / "bad.pt"), str(synth_root / "k400" / "val.csv"), "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: features:") and "blocks3.0.attn.qkv.weight" in err and "\n" not in err
    with open(synth_root / "k400" / "val.csv") as f:
        assert len(list(csv.reader(f))) >= 10


def _blobs(rng, n, centres, noise=1.0):
    labels = rng.integers(0, len(centres), n)
    return centres[labels] + noise * rng.normal(size=(n, centres.shape[1])), labels


def test_linear_probe_reads_a_linear_signal_and_not_a_missing_one():
    rng = np.random.default_rng(0)
    centres = 3.0 * rng.normal(size=(4, 16))
    centres[:, 1:] += 40.0  # a large offset shared by every class: the probe standardises it away
    train, val = _blobs(rng, 200, centres), _blobs(rng, 100, centres)
    assert linear_probe(train, val) >= 95.0
    # labels unrelated to the features: held-out accuracy near chance (25%), far from the fit above
    assert linear_probe((train[0], rng.integers(0, 4, 200)), (val[0], rng.integers(0, 4, 100))) <= 45.0
    # deterministic: the same numbers give the same accuracy
    assert linear_probe(train, val) == linear_probe(train, val)


def test_linear_probe_rejects_mismatched_inputs_in_one_line():
    x, y = np.zeros((10, 4)), np.zeros(10, dtype=int)
    with pytest.raises(ValueError, match=r"linear_probe: expected train / val features \[N, C\]"):
        linear_probe((x, y), (np.zeros((5, 3)), np.zeros(5, dtype=int)))
    with pytest.raises(ValueError, match="linear_probe"):
        linear_probe((x, y[:9]), (x, y))
