"""View placement: hand-computed positions, an independent re-statement of VideoMAE's test-mode slicing, and
views cut from one decode landing on exactly the planned pixels."""

import numpy as np
import pytest
import torch

from videoconvmae.data.transforms import normalize
from videoconvmae.data.views import (
    ViewPlan,
    cut_views,
    k400_temporal_views,
    plan_video_views,
    resized_hw,
    spatial_crop_origins,
    ssv2_temporal_views,
)


def upstream_k400(length, clip_len, rate, t_views, chunk):
    """VideoMAE kinetics.py test mode, step by step: decode every rate-th frame, pad, slice chunk's clip."""
    buffer = list(range(0, length, rate))
    while len(buffer) < clip_len:
        buffer.append(buffer[-1])
    temporal_step = max(1.0 * (len(buffer) - clip_len) / (t_views - 1), 0)
    start = int(chunk * temporal_step)
    return buffer[start:start + clip_len]


def upstream_ssv2(length, num_segment, chunk):
    """VideoMAE ssv2.py test mode (2 temporal views): both samplings, sorted, every other entry."""
    tick = length / float(num_segment)
    union = [int(tick / 2.0 + tick * x) for x in range(num_segment)] + [int(tick * x) for x in range(num_segment)]
    return sorted(union)[chunk::2]


def test_k400_positions_by_hand():
    # 300 frames at stride 4: buffer 0, 4, ..., 296 (75 entries); step (75 - 16) / 4 = 14.75
    views = k400_temporal_views(300, 16, 4, 5)
    assert views.shape == (5, 16)
    starts = [int(k * 14.75) for k in range(5)]
    assert starts == [0, 14, 29, 44, 59]
    np.testing.assert_array_equal(views[:, 0], [0, 56, 116, 176, 236])
    np.testing.assert_array_equal(views[4], np.arange(236, 300, 4))
    assert (np.diff(views, axis=1) == 4).all()


@pytest.mark.parametrize("length", [1, 7, 30, 63, 64, 65, 100, 250, 301])
@pytest.mark.parametrize("rate,t_views", [(4, 5), (2, 5), (4, 2), (8, 3)])
def test_k400_equals_upstream_slicing(length, rate, t_views):
    ours = k400_temporal_views(length, 16, rate, t_views)
    for k in range(t_views):
        assert ours[k].tolist() == upstream_k400(length, 16, rate, t_views, k)
    assert ours.max() < length and ours.min() >= 0


def test_k400_short_video_pads_with_last_frame_and_single_view_is_centred():
    views = k400_temporal_views(30, 16, 4, 5)  # 8 sampled frames, padded to 16: all views identical
    expected = [0, 4, 8, 12, 16, 20, 24, 28] + [28] * 8
    assert all(v.tolist() == expected for v in views)
    one = k400_temporal_views(300, 16, 4, 1)  # B = 75, centred start round(59 / 2) = 30 (banker's: 29.5 -> 30)
    assert one[0, 0] == 4 * round(59 / 2)


def test_ssv2_positions_by_hand():
    views = ssv2_temporal_views(50, 16, 2)  # tick 3.125
    assert views[0].tolist() == [int(3.125 * x) for x in range(16)]
    assert views[1].tolist() == [int(3.125 * x + 1.5625) for x in range(16)]
    assert views[0, :4].tolist() == [0, 3, 6, 9] and views[1, :4].tolist() == [1, 4, 7, 10]


@pytest.mark.parametrize("length", [5, 16, 17, 31, 48, 50, 117, 301])
def test_ssv2_equals_upstream_interleaving(length):
    ours = ssv2_temporal_views(length, 16, 2)
    for k in range(2):
        assert ours[k].tolist() == upstream_ssv2(length, 16, k)
    assert ssv2_temporal_views(length, 16, 1)[0].tolist() == upstream_ssv2(length, 16, 0)


def test_ssv2_more_views_are_offsets_within_segments():
    views = ssv2_temporal_views(64, 8, 4)  # tick 8: offsets 0, 2, 4, 6
    assert views[:, 0].tolist() == [0, 2, 4, 6] and views[:, 1].tolist() == [8, 10, 12, 14]


def test_spatial_positions_by_hand():
    assert resized_hw(240, 320, 224) == (224, 298)  # int(224 * 320 / 240) = 298
    assert resized_hw(320, 240, 224) == (298, 224)
    assert resized_hw(100, 100, 64) == (64, 64)
    assert spatial_crop_origins(224, 298, 224, 3) == [(0, 0), (0, 37), (0, 74)]  # (298 - 224) / 2 = 37
    assert spatial_crop_origins(298, 224, 224, 3) == [(0, 0), (37, 0), (74, 0)]
    assert spatial_crop_origins(64, 64, 64, 3) == [(0, 0)] * 3
    assert spatial_crop_origins(224, 298, 224, 1) == [(0, 37)]
    # crop smaller than the short side (input_size < short_side_size): centred across, spread along
    assert spatial_crop_origins(256, 341, 224, 3) == [(16, 0), (16, 58), (16, 117)]
    assert spatial_crop_origins(100, 173, 50, 4) == [(25, int(i * 123 / 3)) for i in range(4)]


def test_spatial_crop_larger_than_frame_is_a_clear_error():
    with pytest.raises(ValueError, match="does not fit"):
        spatial_crop_origins(64, 80, 96, 3)


def test_cut_views_takes_the_planned_pixels():
    """Frames whose pixels encode (frame, row, column): each view must hold exactly its frames and window."""
    length, h, w = 40, 24, 36
    frame_ids = k400_temporal_views(length, 4, 3, 3)
    plan = plan_video_views(frame_ids, h, w, short_side=h, crop=16, num_spatial=3)
    assert plan.resized == (h, w)  # short side already the test size: no resampling
    union = np.unique(plan.frame_indices)  # what one decode reads
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    frames = np.stack([np.stack([np.full((h, w), f), rows, cols], -1) for f in union]).astype(np.uint8)
    views = cut_views(frames, union, plan)
    assert views.shape == (9, 3, 4, 16, 16) and views.dtype == torch.uint8
    for k in range(3):
        for i, (top, left) in enumerate(plan.crop_origins):
            v = views[k * 3 + i].long()
            assert v[0, :, 0, 0].tolist() == frame_ids[k].tolist()
            assert v[1, 0, :, 0].tolist() == list(range(top, top + 16))
            assert v[2, 0, 0, :].tolist() == list(range(left, left + 16))


def test_cut_views_resizes_once_bilinearly_then_normalises():
    frames = np.random.default_rng(0).integers(0, 256, (2, 30, 40, 3), dtype=np.uint8)
    plan = ViewPlan(np.array([[0, 1]]), resized_hw(30, 40, 24), ((0, 4),), 24)
    views = normalize(cut_views(frames, np.array([0, 1]), plan), mean=[0.5] * 3, std=[0.25] * 3)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    ref = torch.nn.functional.interpolate(x, size=(24, 32), mode="bilinear", align_corners=False)
    ref = ((ref / 255 - 0.5) / 0.25)[:, :, :, 4:28].permute(1, 0, 2, 3)
    # uint8 in, uint8 out (as cv2 on uint8 frames): the float reference rounded, so within 1/255 before scaling
    assert float((views[0] - ref).abs().max()) <= 1.01 / 255 / 0.25
    assert float((views[0] - ref).abs().mean()) < 0.4 / 255 / 0.25  # rounding alone averages 0.25
