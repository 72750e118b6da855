"""Fidelity of clip sampling to VideoMAE (FIDELITY.md): which sampling each dataset / mode uses, the frame
positions re-derived here from the upstream description, and keys the chosen sampling never reads."""

from __future__ import annotations

import random

import numpy as np
import pytest

from videoconvmae.config import list_presets, load_config
from videoconvmae.data.config import DataConfig
from videoconvmae.data.dataset import build_dataset
from videoconvmae.data.sampling import clip_sampling
from videoconvmae.errors import ConfigError


def _ssv2(root, **kw):
    return DataConfig(dataset="ssv2", root=f"{root}/ssv2/videos", train_annotation=f"{root}/ssv2/train.json",
                      val_annotation=f"{root}/ssv2/validation.json", input_size=32, num_workers=0, **kw)


def test_ssv2_pretraining_samples_dense_16x2(synth_root):
    """VideoMAE pretrains SSV2 through kinetics.py's VideoMAE loader (new_length 16, new_step = --sampling_rate
    2 in scripts/ssv2/*/pretrain.sh): 16 frames 2 apart from a random start."""
    ds = build_dataset(_ssv2(synth_root), "train", "pretrain")
    rng = random.Random(0)
    starts = set()
    for _ in range(200):
        idx = ds.choose_indices(120, rng)
        start = int(idx[0])
        assert idx.tolist() == [start + 2 * i for i in range(16)]
        assert 0 <= start <= 120 - 31
        starts.add(start)
    assert len(starts) > 40  # a random start, not a fixed one
    assert ds[0]["input"].shape == (3, 16, 32, 32)  # a 20-frame video: the clip holds its last frame


def test_ssv2_finetuning_and_eval_sample_segments(synth_root):
    """VideoMAE finetunes / tests SSV2 with ssv2.py's SSVideoClsDataset: num_segment = --num_frames segments,
    one frame each (test: the segment centres)."""
    ds = build_dataset(_ssv2(synth_root), "val", "finetune")
    assert ds.choose_indices(160, random.Random(0)).tolist() == [int(10 * k + 5) for k in range(16)]
    assert clip_sampling(_ssv2(synth_root), "eval").kind == "segment"
    dense = clip_sampling(_ssv2(synth_root, sampling="dense", sampling_rate=3), "finetune")  # the switch
    assert (dense.kind, dense.num_frames, dense.sampling_rate) == ("dense", 16, 3)


def test_k400_samples_dense_16x4_in_every_mode():
    for mode in ("pretrain", "finetune", "linprobe", "eval"):
        s = clip_sampling(DataConfig(dataset="k400"), mode)
        assert (s.kind, s.num_frames, s.sampling_rate) == ("dense", 16, 4)


def test_a_sampling_key_nothing_reads_is_an_error(synth_root):
    with pytest.raises(ConfigError, match=r"data.sampling_rate=4 is not read: ssv2 finetune samples segment"):
        clip_sampling(_ssv2(synth_root, sampling_rate=4), "finetune")
    with pytest.raises(ConfigError, match=r"data.num_segments=16 is not read: ssv2 pretrain samples dense"):
        clip_sampling(_ssv2(synth_root, num_segments=16), "pretrain")
    with pytest.raises(ConfigError, match=r"data.num_segments=8 is not read: k400"):
        build_dataset(DataConfig(dataset="k400", root=f"{synth_root}/k400", num_segments=8,
                                 train_annotation=f"{synth_root}/k400/train.csv"), "train", "finetune")
    with pytest.raises(ConfigError, match="data.sampling: expected dense | segment"):
        clip_sampling(DataConfig(sampling="tsn"), "finetune")


@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_resolves_its_sampling(preset):
    cfg = load_config(preset)
    if cfg.data.dataset != "imagefolder":
        clip_sampling(cfg.data, cfg.task)  # raises on a key the preset sets but its sampling never reads


def test_segment_positions():
    """Our SSV2 training rule (a random offset in each of num_segments equal FRACTIONAL segments), re-derived."""
    from videoconvmae.data.sampling import segment_indices

    rng, ref = random.Random(3), random.Random(3)
    idx = segment_indices(50, 8, train=True, rng=rng)
    want = [min(49, int(np.floor(k * 50 / 8 + ref.random() * 50 / 8))) for k in range(8)]
    assert idx.tolist() == want


def test_image_pretraining_crops_and_flips_like_mae():
    """MAE / ConvMAE main_pretrain.py: RandomResizedCrop(scale=(0.2, 1.0)) + RandomHorizontalFlip."""
    from videoconvmae.data.transforms import flip_enabled

    cfg = load_config("pretrain_in1k_base").data
    assert cfg.pretrain_crop == "rrc" and cfg.pretrain_rrc_scale == [0.2, 1.0] and flip_enabled(cfg, "pretrain")


def test_randaugment_is_bicubic_like_both_upstreams():
    """VideoMAE (create_random_augment(interpolation=args.train_interpolation='bicubic')) and MAE / ConvMAE
    (timm create_transform(interpolation='bicubic')) give RandAugment bicubic resampling, not timm's random."""
    from PIL import Image

    from videoconvmae.data.transforms import ClipRandAugment

    ops = ClipRandAugment("rand-m7-n4-mstd0.5-inc1", 224, [0.485, 0.456, 0.406]).op.ops
    assert ops and all(op.kwargs["resample"] == Image.BICUBIC for op in ops)


def test_resize_is_bicubic_for_images_bilinear_for_video():
    """MAE / ConvMAE resize images with PIL BICUBIC (RandomResizedCrop(interpolation=3), the eval Resize);
    VideoMAE resizes frames with PIL BILINEAR (GroupMultiScaleCrop, Resize). Our one uint8 resize per clip is
    compared with PIL's on the same crop (the val pipeline: short side to 32, centre 32)."""
    from PIL import Image

    from videoconvmae.data.transforms import ClipTransform

    rng = np.random.default_rng(0)
    frame = np.asarray(Image.fromarray(rng.integers(0, 256, (12, 16, 3), np.uint8)).resize((64, 48)))
    for dataset, pil_mode, other in (("imagefolder", Image.BICUBIC, Image.BILINEAR),
                                     ("k400", Image.BILINEAR, Image.BICUBIC)):
        cfg = DataConfig(dataset=dataset, input_size=32, short_side_size=32, mean=[0, 0, 0], std=[1, 1, 1])
        ours = (ClipTransform(cfg, "finetune", train=False)(frame[None])[:, 0] * 255).permute(1, 2, 0).numpy()
        crop = Image.fromarray(frame).crop((8, 0, 56, 48))  # short side 48 -> 32: the centre 48 x 48
        want = np.asarray(crop.resize((32, 32), pil_mode), dtype=np.float64)
        wrong = np.asarray(crop.resize((32, 32), other), dtype=np.float64)
        assert np.abs(ours - want).mean() < 0.6 < np.abs(ours - wrong).mean(), dataset
