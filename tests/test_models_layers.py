"""Masks, their upsampling, sin-cos position embeddings, the models CLI."""

import numpy as np
import pytest
import torch
from mae_reference import mae_2d_sincos_numpy

from videoconvmae.cli import main
from videoconvmae.models.layers import ConvBlock, sincos_2d, sincos_3d
from videoconvmae.models.masking import (
    make_mask,
    num_visible,
    random_mask,
    sample_masks,
    tube_mask,
    upsample_keep,
    visible_indices,
)


def test_random_mask_hides_the_same_count_per_sample_and_replays_with_a_generator():
    mask = random_mask(64, 196, 0.75, torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and mask.shape == (64, 196)
    assert (mask.sum(1) == 196 - 49).all()
    assert torch.equal(mask, random_mask(64, 196, 0.75, torch.Generator().manual_seed(0)))
    assert not torch.equal(mask, random_mask(64, 196, 0.75, torch.Generator().manual_seed(1)))
    # uniform over cells: each cell is hidden ~75% of the time over many draws
    freq = random_mask(4000, 16, 0.75, torch.Generator().manual_seed(2)).float().mean(0)
    assert (freq - 0.75).abs().max() < 0.04


def test_tube_mask_shares_the_spatial_mask_over_time():
    mask = tube_mask(3, (8, 14, 14), 0.9, torch.Generator().manual_seed(0)).reshape(3, 8, 196)
    assert (mask == mask[:, :1]).all()
    # VideoMAE's TubeMaskingGenerator: num_masks_per_frame = int(mask_ratio * H * W) = int(176.4) = 176
    assert (mask[:, 0].sum(1) == 176).all() and (~mask).sum((1, 2)).tolist() == [8 * 20] * 3
    rand = make_mask("random", 3, (8, 14, 14), 0.9, torch.Generator().manual_seed(0)).reshape(3, 8, 196)
    assert not (rand == rand[:, :1]).all()  # space-time random: differs over time
    with pytest.raises(ValueError, match="tube"):
        make_mask("tube", 1, (14, 14), 0.9)
    with pytest.raises(ValueError, match="block\\|tube\\|random"):
        make_mask("grid", 1, (14, 14), 0.9)


@pytest.mark.parametrize("length,ratio", [(196, 0.75), (196, 0.9), (100, 0.9), (16, 0.75), (49, 0.6)])
def test_block_mask_keeps_convmae_len_keep(length, ratio):
    """ConvMAE's random_masking: len_keep = int(L * (1 - mask_ratio)), no rounding help (100 at 0.9 keeps 9)."""
    len_keep = int(length * (1 - ratio))
    assert num_visible(length, ratio) == len_keep
    assert ((~random_mask(3, length, ratio, torch.Generator().manual_seed(0))).sum(1) == len_keep).all()


@pytest.mark.parametrize("hw,ratio", [(196, 0.9), (196, 0.75), (16, 0.75), (100, 0.9), (49, 0.6)])
def test_tube_mask_masks_videomae_count_per_slice(hw, ratio):
    """VideoMAE's TubeMaskingGenerator hides int(mask_ratio * H*W) cells of every slice."""
    masked_per_slice = int(ratio * hw)
    mask = tube_mask(2, (4, 1, hw), ratio, torch.Generator().manual_seed(0)).reshape(2, 4, hw)
    assert (mask.sum(-1) == masked_per_slice).all()


def test_sample_masks_depend_on_each_rows_seed_only():
    seeds = torch.tensor([11, 12, 13, 14])
    whole = sample_masks("tube", (2, 4, 4), 0.75, seeds)
    halves = torch.cat([sample_masks("tube", (2, 4, 4), 0.75, seeds[0::2]),
                        sample_masks("tube", (2, 4, 4), 0.75, seeds[1::2])])[[0, 2, 1, 3]]
    assert torch.equal(whole, halves)  # how rows are split over processes changes nothing
    assert not torch.equal(whole[0], whole[1]) and (whole.sum(1) == 24).all()
    assert torch.equal(whole[:1], make_mask("tube", 1, (2, 4, 4), 0.75, torch.Generator().manual_seed(11)))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_depthwise_weight_has_the_strides_of_its_gradient(spatial_dims):
    """DDP copies a gradient whose strides differ from the parameter's (and warns): they must be equal."""
    block = ConvBlock(8, spatial_dims=spatial_dims)
    x = torch.randn(2, *((3,) if spatial_dims == 3 else ()), 6, 6, 8)
    block(x).sum().backward()
    w = block.dwconv.weight
    assert w.grad.stride() == w.stride() and w.is_contiguous()
    clone = ConvBlock(8, spatial_dims=spatial_dims)
    clone.load_state_dict(block.state_dict())
    assert clone.dwconv.weight.stride() == w.stride() and torch.equal(clone.dwconv.weight, w)


def test_upsampling_matches_the_official_repeat_permute():
    mask = random_mask(2, 4 * 6, 0.5, torch.Generator().manual_seed(0))
    ours = upsample_keep(mask.reshape(2, 4, 6), 4)
    # Alpha-VL/ConvMAE: mask.reshape(-1,14,14).unsqueeze(-1).repeat(1,1,1,16).reshape(-1,14,14,4,4).permute(...)
    theirs = mask.reshape(-1, 4, 6).unsqueeze(-1).repeat(1, 1, 1, 16).reshape(-1, 4, 6, 4, 4)
    theirs = theirs.permute(0, 1, 3, 2, 4).reshape(2, 16, 24)
    assert torch.equal(ours, theirs)
    video = upsample_keep(mask.reshape(2, 1, 4, 6).expand(2, 3, 4, 6), 2)
    assert video.shape == (2, 3, 8, 12) and torch.equal(video[:, 2], upsample_keep(mask.reshape(2, 4, 6), 2))


def test_visible_indices_ascending_and_rectangular():
    mask = torch.tensor([[True, False, True, False], [False, False, True, True]])
    assert visible_indices(mask).tolist() == [[1, 3], [0, 1]]
    with pytest.raises(ValueError, match="same number"):
        visible_indices(torch.tensor([[True, False], [False, False]]))


def test_2d_sincos_matches_mae_and_3d_at_t0_equals_2d():
    dim, gh, gw = 32, 3, 5
    mae = mae_2d_sincos_numpy(dim, gh, gw)
    ours = sincos_2d(dim, (gh, gw))
    np.testing.assert_allclose(ours.numpy(), mae, atol=1e-12)
    three = sincos_3d(dim, (4, gh, gw)).reshape(4, gh * gw, dim)
    assert torch.equal(sincos_3d(dim, (1, gh, gw)), ours)
    assert torch.equal(three[0], ours)
    assert (three[1:] - three[:1]).abs().amax(dim=(1, 2)).min() > 0.1  # time is encoded
    flat = three.reshape(-1, dim)
    assert torch.cdist(flat, flat).add(torch.eye(len(flat)) * 10).min() > 1e-3  # every position distinct


def test_models_cli_prints_params_against_table7(capsys):
    assert main(["models", "--params", "--filter", "convmae_base_pretrain"]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("convmae_base_pretrain"))
    encoder, total, paper, diff = line.split()[1:]
    assert float(encoder) == pytest.approx(84.46, abs=0.01) and float(paper) == 84 and diff == "+0.5%"
    assert "videoconvmae_base_pretrain" in out and float(total) > float(encoder)
    assert main(["models"]) == 0
    assert "videoconvmae_tiny_cls" in capsys.readouterr().out.split()


def test_one_mask_check_for_the_config_the_model_and_the_mask():
    from videoconvmae.models import create_model
    from videoconvmae.models.config import ModelConfig

    for build in (lambda: ModelConfig(mask_ratio=1.0), lambda: create_model("convmae_tiny_pretrain", mask_ratio=1.0),
                  lambda: make_mask("block", 1, (2, 2), 1.0), lambda: make_mask("block", 1, (2, 2), 0.0)):
        with pytest.raises(ValueError, match=r"mask_ratio: expected a value in \(0, 1\)"):
            build()
    for build in (lambda: ModelConfig(mask_type="grid"),
                  lambda: create_model("convmae_tiny_pretrain", mask_type="grid")):
        with pytest.raises(ValueError, match=r"mask_type: expected block\|tube\|random, got 'grid'"):
            build()
    with pytest.raises(ValueError, match="'tube' needs a video"):
        create_model("convmae_tiny_pretrain", mask_type="tube")
