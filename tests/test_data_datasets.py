"""Datasets, transforms, skip accounting and mixup on the synthetic dataset's real files."""

import os
import random
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from videoconvmae.data import dataset as dataset_module
from videoconvmae.data.config import DataConfig
from videoconvmae.data.dataset import SkipStats, build_dataset, collate
from videoconvmae.data.mixup import build_mixup
from videoconvmae.data.sampling import dense_indices, segment_indices
from videoconvmae.data.synth import encode_video
from videoconvmae.data.transforms import MULTISCALE_SCALES, ClipErasing, ClipTransform, multiscale_crop_box
from videoconvmae.data.video import UnreadableError, read_clip
from videoconvmae.errors import ConfigError, DataError

TINY = dict(num_frames=4, input_size=32, short_side_size=32, num_workers=0)


def _cfg(root, dataset="k400", **kw):
    paths = {
        "k400": dict(root=f"{root}/k400", train_annotation=f"{root}/k400/train.csv",
                     val_annotation=f"{root}/k400/val.csv", sampling_rate=2),
        "ssv2": dict(root=f"{root}/ssv2/videos", train_annotation=f"{root}/ssv2/train.json",
                     val_annotation=f"{root}/ssv2/validation.json"),
        "imagefolder": dict(train_annotation=f"{root}/imagenet/train", val_annotation=f"{root}/imagenet/val"),
    }[dataset]
    return DataConfig(**{"dataset": dataset, **paths, **TINY, **kw})


@pytest.mark.parametrize("dataset", ["k400", "ssv2", "imagefolder"])
@pytest.mark.parametrize("mode", ["pretrain", "finetune", "linprobe"])
def test_batches_have_the_contract_shapes(synth_root, dataset, mode):
    cfg = _cfg(synth_root, dataset, repeated_aug=2)
    for split, r in (("train", 2), ("val", 1)):
        ds = build_dataset(cfg, split, mode)
        batch = collate([ds[i] for i in range(3)])
        spatial = (32, 32) if dataset == "imagefolder" else (4, 32, 32)
        assert batch["input"].shape == (3 * r, 3, *spatial) and batch["input"].dtype == torch.float32
        assert batch["label"].dtype == torch.long and batch["index"].tolist() == [i for i in range(3) for _ in range(r)]
        assert batch["label"].tolist() == [ds.records[i].label for i in range(3) for _ in range(r)]
        assert batch["skips"] == {} and torch.isfinite(batch["input"]).all()
        assert ds.num_classes == 5


def test_val_transform_is_deterministic_and_normalised(synth_root):
    ds = build_dataset(_cfg(synth_root, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]), "val", "finetune")
    a, b = ds[1]["input"], ds[1]["input"]
    torch.testing.assert_close(a, b)
    gray = np.full((2, 40, 60, 3), 153, np.uint8)  # 153/255 = 0.6 -> (0.6 - 0.5) / 0.25 = 0.4
    torch.testing.assert_close(ds.transform(gray), torch.full((3, 2, 32, 32), 0.4), atol=1e-5, rtol=0)


def test_same_augmentation_for_every_frame():
    """RandAugment (replayed), crop and flip are the same for all frames: identical frames stay identical."""
    cfg = DataConfig(input_size=24, randaug="rand-m9-n4-mstd0.5-inc1", reprob=0.0)
    transform = ClipTransform(cfg, "finetune", train=True)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (1, 40, 48, 3), np.uint8)
    outs = []
    for seed in range(8):
        random.seed(seed)
        np.random.seed(seed)
        x = transform(np.repeat(frame, 5, axis=0))
        for t in range(1, 5):
            torch.testing.assert_close(x[:, t], x[:, 0], atol=0, rtol=0)
        outs.append(x[:, 0])
    assert len({round(float(o.sum()), 3) for o in outs}) > 4  # but clips differ from each other


def test_random_erasing_uses_one_box_for_all_frames():
    random.seed(1)
    x = ClipErasing(probability=1.0)(torch.zeros(3, 6, 20, 20))
    erased = (x != 0).any(0)  # [T, H, W]
    assert erased.any()
    for t in range(1, 6):
        assert torch.equal(erased[t], erased[0])


def test_multiscale_crop_sizes_follow_videomae():
    rng = random.Random(0)
    allowed = {int(48 * s) for s in MULTISCALE_SCALES} | {32}
    seen = set()
    for _ in range(300):
        top, left, ch, cw = multiscale_crop_box(48, 64, 32, rng)
        assert ch in allowed and cw in allowed and 0 <= top <= 48 - ch and 0 <= left <= 64 - cw
        assert abs(sorted(allowed).index(ch) - sorted(allowed).index(cw)) <= 1  # max_distort 1
        seen.add((ch, cw))
    assert len(seen) >= 6


def test_dense_sampling_pads_by_repeating_last_frame():
    assert dense_indices(100, 4, 4, train=False).tolist() == [43, 47, 51, 55]  # centred
    assert dense_indices(100, 4, 4, train=False, position=0.0).tolist() == [0, 4, 8, 12]
    assert dense_indices(10, 4, 4, train=True).tolist() == [0, 4, 8, 9]  # short: last frame repeated
    for _ in range(50):
        idx = dense_indices(30, 4, 4, train=True, rng=random)
        assert idx[0] <= 30 - 13 and np.all(np.diff(idx) == 4)


def test_segment_sampling():
    assert segment_indices(32, 4, train=False).tolist() == [4, 12, 20, 28]  # segment centres
    for _ in range(50):
        idx = segment_indices(32, 4, train=True, rng=random)
        assert all(8 * k <= i < 8 * (k + 1) for k, i in enumerate(idx))
    assert segment_indices(3, 6, train=False).tolist() == [0, 0, 1, 1, 2, 2]  # short: frames repeat in order


def _gradient_video(path, t=8, h=48, w=64):
    ramp = np.linspace(0, 255, w).astype(np.uint8)
    encode_video(path, np.broadcast_to(ramp[None, None, :, None], (t, h, w, 3)).copy())


def _ramp_directions(tmp_path, dataset, mode, **kw):
    """Left-to-right? for 25 training clips of a brightness ramp (a flipped clip runs right-to-left)."""
    _gradient_video(tmp_path / "ramp.webm")
    _gradient_video(tmp_path / "ramp.mp4")
    (tmp_path / "ssv2.txt").write_text("ramp.webm 0\n")
    (tmp_path / "k400.txt").write_text("ramp.mp4 0\n")
    cfg = DataConfig(dataset=dataset, root=str(tmp_path), train_annotation=str(tmp_path / f"{dataset}.txt"),
                     randaug="", reprob=0.0, **TINY, **kw)
    ds = build_dataset(cfg, "train", mode)
    random.seed(0)
    out = []
    for _ in range(25):
        x = ds[0]["input"]
        out.append(bool(x[..., -1].mean() > x[..., 0].mean()))
    return out


def test_ssv2_training_never_flips(tmp_path):
    """SSV2 labels name directions: no mode flips, and asking for a flip is an error, not silently ignored."""
    for mode in ("pretrain", "finetune", "linprobe"):
        assert all(_ramp_directions(tmp_path, "ssv2", mode))
    with pytest.raises(ConfigError, match="data.flip=true: ssv2"):
        _ramp_directions(tmp_path, "ssv2", "finetune", flip=True)


def test_video_pretraining_does_not_flip_finetuning_does(tmp_path):
    """VideoMAE's pretraining transform (DataAugmentationForVideoMAE: multi-scale crop, stack, normalise) has no
    flip; its K400 finetuning flips. data.flip=true still turns it on for pretraining when asked."""
    assert all(_ramp_directions(tmp_path, "k400", "pretrain"))
    finetune = _ramp_directions(tmp_path, "k400", "finetune")
    assert 0 < sum(finetune) < len(finetune)  # about half the clips mirrored
    asked = _ramp_directions(tmp_path, "k400", "pretrain", flip=True)
    assert 0 < sum(asked) < len(asked)


def test_repeated_augmentation_decodes_once(synth_root, monkeypatch):
    calls = []
    real = dataset_module.start_clip_read

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    ds = build_dataset(_cfg(synth_root, repeated_aug=3), "train", "finetune")
    monkeypatch.setattr(dataset_module, "start_clip_read", counting)
    item = ds[2]
    assert len(calls) == 1 and calls[0] == ds.records[2].path
    x = item["input"]
    assert x.shape == (3, 3, 4, 32, 32)
    assert not torch.equal(x[0], x[1]) and not torch.equal(x[1], x[2])  # three different augmentations


def _break_files(root):
    """Corrupt four K400 train files in four ways; returns {index: file}."""
    records = build_dataset(_cfg(root), "train", "pretrain").records
    bad = {1: "zero", 4: "garbage", 7: "truncated", 11: "missing"}
    for index, kind in bad.items():
        path = records[index].path
        with open(path, "rb") as f:
            data = f.read()
        if kind == "missing":
            os.remove(path)
        else:
            content = {"zero": b"", "garbage": np.random.default_rng(index).integers(0, 256, 5000, np.uint8).tobytes(),
                       "truncated": data[: len(data) // 3]}[kind]
            with open(path, "wb") as f:
                f.write(content)
    return records, bad


def test_unreadable_items_are_skipped_and_counted_in_a_worker_loader(synth_root, tmp_path):
    root = tmp_path / "synth"
    shutil.copytree(synth_root, root)
    records, bad = _break_files(root)
    ds = build_dataset(_cfg(root), "train", "pretrain")

    # what each bad file fails with, and the replacement chain the dataset will follow (deterministic)
    reasons = {}
    for index in bad:
        with pytest.raises(UnreadableError) as err:
            read_clip(records[index].path, "decord", lambda n, fps: [0], timeout_s=30)
        reasons[index] = err.value.reason
    assert {reasons[1], reasons[11]} == {"empty", "missing"} and reasons[4] == "open_error"
    expected = Counter()
    for index in bad:
        candidate, attempt = index, 0
        while candidate in bad:
            expected[reasons[candidate]] += 1
            candidate, attempt = ds.replacement(index, attempt), attempt + 1

    stats = SkipStats()
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    seen = []
    for batch in loader:
        stats.update(batch)
        seen += batch["index"].tolist()
        assert torch.isfinite(batch["input"]).all()
    assert sorted(seen) == list(range(len(ds)))
    assert stats.counts == expected and stats.items == len(ds)
    assert stats.as_dict()["skipped"] == sum(expected.values())
    stats.check(max_fraction=0.5)  # 4+ of 19 reads: fine under a loose bound
    pattern = r"skipped \d+ of \d+ reads \(\d+.\d%: missing: \d+, empty: \d+, .*\) exceeds data.max_skip_fraction=0.05"
    with pytest.raises(DataError, match=pattern):
        stats.check(max_fraction=0.05)
    stats.check(max_fraction=0.05, min_reads=1000)  # not enough reads yet to judge


def test_zero_readable_items_fail_at_construction(synth_root, tmp_path):
    (tmp_path / "k400").mkdir()
    shutil.copy(synth_root / "k400/train.csv", tmp_path / "k400/train.csv")  # annotation without its videos
    cfg = DataConfig(dataset="k400", root=str(tmp_path / "k400"), train_annotation=str(tmp_path / "k400/train.csv"))
    with pytest.raises(DataError, match=r"k400/train.csv: none of its 15 items is readable.*missing"):
        build_dataset(cfg, "train", "pretrain")


def test_mixup_cutmix_cuts_the_same_box_in_every_frame():
    cfg = DataConfig(mixup=0.0, cutmix=1.0, label_smoothing=0.1)
    mix = build_mixup(cfg, num_classes=4)
    torch.manual_seed(0)
    np.random.seed(0)
    x = torch.stack([torch.zeros(3, 5, 16, 16), torch.ones(3, 5, 16, 16)])
    mixed, soft = mix(x.clone(), torch.tensor([0, 3]))
    assert mixed.shape == x.shape and soft.shape == (2, 4)
    torch.testing.assert_close(soft.sum(1), torch.ones(2))
    box = mixed[0, 0] != 0  # [T, H, W]: where sample 1 was pasted into sample 0
    assert box.any() and all(torch.equal(box[t], box[0]) for t in range(5))
    lam = 1 - box[0].float().mean()  # the soft label follows the pasted area
    torch.testing.assert_close(soft[0, 0], lam * 0.925 + (1 - lam) * 0.025, atol=1e-5, rtol=0)
    assert build_mixup(DataConfig(mixup=0.0, cutmix=0.0), 4) is None


def test_batched_fetch_fills_one_tensor_and_matches_single_items(synth_root):
    """``__getitems__`` (what a DataLoader calls) augments into one batch tensor that ``collate`` hands on without
    a copy; on the deterministic val pipeline it equals item-by-item fetching."""
    for dataset in ("k400", "ssv2", "imagefolder"):
        ds = build_dataset(_cfg(synth_root, dataset), "val", "finetune")
        items = ds.__getitems__([3, 0, 5])
        batch = collate(items)
        assert batch["input"].data_ptr() == items[0]["input"].data_ptr()  # no copy
        single = collate([ds[3], ds[0], ds[5]])
        torch.testing.assert_close(batch["input"], single["input"], atol=0, rtol=0)
        assert batch["index"].tolist() == [3, 0, 5] and torch.equal(batch["label"], single["label"])


def test_a_hanging_decode_is_skipped_as_timeout(synth_root, monkeypatch):
    import time

    import videoconvmae.data.video as video_module

    ds = build_dataset(_cfg(synth_root, decode_timeout_s=0.5), "train", "pretrain")
    real_open, hung = video_module.open_video, ds.records[2].path

    def hanging_open(path, backend="decord"):
        if path == hung:
            time.sleep(3)  # a decoder stuck in C code, as dmlc/decord #269 reports
        return real_open(path, backend)

    monkeypatch.setattr(video_module, "open_video", hanging_open)
    start = time.monotonic()
    batch = collate(ds.__getitems__([1, 2, 3]))
    assert time.monotonic() - start < 2.5
    assert batch["skips"] == {"timeout": 1} and batch["index"].tolist() == [1, 2, 3]
    assert batch["label"][1] == ds.records[ds.replacement(2, 0)].label


def test_skip_stats_accumulate_and_restore():
    stats = SkipStats()
    stats.update({"index": torch.tensor([0, 0, 1, 1]), "skips": {"missing": 2}})  # repeated aug: 2 items
    stats.update({"index": torch.tensor([2, 2, 3, 3]), "skips": {}})
    assert stats.items == 4 and stats.skipped == 2 and stats.fraction == pytest.approx(2 / 6)
    assert stats.as_dict() == {"items": 4, "skipped": 2, "skipped/missing": 2}
    restored = SkipStats()
    restored.load_state_dict(stats.state_dict())
    assert restored.as_dict() == stats.as_dict()
    with pytest.raises(DataError, match=r"skipped 2 of 6 reads \(33.3%: missing: 2\)"):
        restored.check(0.05)


def test_a_slow_decode_changes_nothing(synth_root, monkeypatch):
    """Slow (a loaded machine) is not hung: with the default limit the batch is exactly the fast one."""
    import time

    import videoconvmae.data.video as video_module

    def seeded_batch():
        random.seed(3), np.random.seed(3), torch.manual_seed(3)
        return collate(ds.__getitems__([0, 4, 2]))

    ds = build_dataset(_cfg(synth_root, decode_timeout_s=DataConfig().decode_timeout_s), "train", "pretrain")
    fast = seeded_batch()
    real_open = video_module.open_video

    def slow_open(path, backend="decord"):
        time.sleep(0.3)
        return real_open(path, backend)

    monkeypatch.setattr(video_module, "open_video", slow_open)
    slow = seeded_batch()
    assert slow["skips"] == {} and torch.equal(slow["input"], fast["input"])
    assert torch.equal(slow["label"], fast["label"])
