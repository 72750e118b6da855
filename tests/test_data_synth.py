"""The synthetic dataset: real H.264 / VP9 files, deterministic, labels visible only in motion."""

import json
from multiprocessing import get_context

import av
import numpy as np
import pytest

from videoconvmae.cli import main
from videoconvmae.data.synth import (
    MOTIONS,
    SynthSpec,
    _clip_rng,
    _disk_frames,
    _k400_jobs,
    _ssv2_jobs,
    render_clip,
    write_synthetic_dataset,
)

TINY = dict(num_classes=5, train_per_class=1, val_per_class=1, num_frames=6, height=32, width=32,
            images_per_class=2, image_size=32)


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _decoded(path):
    from videoconvmae.data.video import open_video

    with open_video(path, "pyav") as reader:
        return reader.get_frames(range(reader.num_frames)).astype(int)


def test_deterministic_from_seed(tmp_path):
    a = _files(write_synthetic_dataset(tmp_path / "a", seed=3, **TINY))
    b = _files(write_synthetic_dataset(tmp_path / "b", seed=3, **TINY, workers=2))
    c = _files(write_synthetic_dataset(tmp_path / "c", seed=4, **TINY))
    a.pop(next(k for k in a if k.name == "synth.json"))
    b.pop(next(k for k in b if k.name == "synth.json"))
    assert a.keys() == b.keys()  # same names, serial or in 2 processes
    videos = [k for k in a if k.suffix in (".mp4", ".webm")]
    assert len(videos) == 2 * 5 * 2
    assert all(a[k] == b[k] for k in a if k not in videos)  # annotations and JPEGs: same bytes
    assert sum(a[k] != c.get(k) for k in a) > len(a) // 2  # another seed: other names and pixels


def test_clips_render_the_same_frames_in_any_process_and_decode_to_them(tmp_path):
    """The pixels are the seed's. The encoded bytes usually are too, but x264 is not guaranteed bit-repeatable
    (see data/synth.py), so each file is checked against its own rendering instead of another file's bytes."""
    spec = SynthSpec(seed=3, **TINY)
    root = write_synthetic_dataset(tmp_path, seed=3, **TINY, workers=2)
    jobs = _k400_jobs(spec, root / "k400") + _ssv2_jobs(spec, root / "ssv2")
    with get_context("spawn").Pool(2) as pool:
        in_workers = pool.map(render_clip, jobs)
    for job, rendered in zip(jobs, in_workers):
        np.testing.assert_array_equal(rendered, render_clip(job))
    for i, job in enumerate(jobs):  # each file decodes to (lossy) its own clip: nearest of all renderings
        decoded = _decoded(job[-1])
        errors = [np.abs(decoded - rendered).mean() for rendered in in_workers]
        assert int(np.argmin(errors)) == i and errors[i] < 8, (job[-1], errors[i], sorted(errors)[:3])


def test_label_is_only_in_the_motion():
    """Given the same random draws, every class renders the SAME first frame; the classes differ afterwards."""
    spec = SynthSpec(num_frames=6, height=32, width=48)
    clips = [_disk_frames(_clip_rng(spec, "k400", "train", 7), motion, spec) for motion in range(len(MOTIONS))]
    for clip in clips[1:]:
        np.testing.assert_array_equal(clip[0], clips[0][0])
    later = {clip[5].tobytes() for clip in clips}
    assert len(later) == len(MOTIONS)
    assert all(not np.array_equal(clip[5], clip[0]) for clip in clips)  # everything moves


def test_layout_and_codecs(synth_root):
    assert (synth_root / "k400/train.csv").read_text().startswith("label,youtube_id,time_start,time_end,split\n")
    mp4 = sorted((synth_root / "k400/train").glob("*.mp4"))
    webm = sorted((synth_root / "ssv2/videos").glob("*.webm"))
    assert len(mp4) == 15 and len(webm) == 25
    with av.open(str(mp4[0])) as c:
        assert c.streams.video[0].codec_context.name == "h264"
    with av.open(str(webm[0])) as c:
        assert c.streams.video[0].codec_context.name == "vp9"
    labels = json.loads((synth_root / "ssv2/labels.json").read_text())
    assert all("[" not in name for name in labels) and sorted(map(int, labels.values())) == list(range(5))
    assert len(list((synth_root / "imagenet/val").glob("*/*.JPEG"))) == 10


def test_bad_parameters():
    with pytest.raises(ValueError, match="num_classes: expected 5..8"):
        write_synthetic_dataset("/nonexistent", num_classes=9)
    with pytest.raises(ValueError, match="even sizes"):
        write_synthetic_dataset("/nonexistent", height=33)


def test_cli_synth_and_check(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["data", "synth", "--out", str(out), "--classes", "5", "--train-per-class", "2",
                 "--val-per-class", "1", "--frames", "6", "--height", "32", "--width", "32",
                 "--images-per-class", "2", "--workers", "1"]) == 0
    assert "wrote" in capsys.readouterr().out
    annotation = str(out / "ssv2/train.json")
    assert main(["data", "check", annotation, f"data.root={out / 'ssv2/videos'}", "data.decoder=pyav"]) == 0
    first_id = json.loads((out / "ssv2/train.json").read_text())[0]["id"]
    broken = out / "ssv2/videos" / f"{first_id}.webm"
    broken.write_bytes(broken.read_bytes()[:200])
    report = tmp_path / "report.tsv"
    assert main(["data", "check", annotation, "--report", str(report), f"data.root={out / 'ssv2/videos'}"]) == 1
    lines = report.read_text().splitlines()
    assert lines[0] == "path\treason\tdetail" and len(lines) == 2
    assert lines[1].startswith(f"{broken}\t") and lines[1].split("\t")[1] in ("open_error", "decode_error")
    assert "9 of 10 items readable" in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path / "nope.csv")]) == 2


def _shift(a, b):
    """(dy, dx) that moves b onto a, by phase correlation."""
    spectrum = np.fft.fft2(a) * np.conj(np.fft.fft2(b))
    corr = np.fft.ifft2(spectrum / (np.abs(spectrum) + 1e-9)).real
    y, x = np.unravel_index(np.argmax(corr), corr.shape)
    h, w = corr.shape
    return (y if y <= h // 2 else y - h), (x if x <= w // 2 else x - w)


def test_decoded_clips_move_the_way_their_label_says(synth_root):
    """Frame differences cancel the static background; their shift over 12 frames is the object's motion.

    Differences span 4 frames: at under a pixel per frame a 1-frame difference can be empty (rounding)."""
    from videoconvmae.data.config import DataConfig
    from videoconvmae.data.records import load_records
    from videoconvmae.data.video import open_video

    expected = {"moving right": (0, 1), "moving left": (0, -1), "moving down": (1, 0), "moving up": (-1, 0)}
    records, names = load_records(DataConfig(root=str(synth_root / "k400"),
                                             train_annotation=str(synth_root / "k400/train.csv")), "train")
    records = [r for r in records if names[r.label] in expected]
    assert len(records) == 12
    for record in records:
        with open_video(record.path, "pyav") as reader:
            frames = reader.get_frames(range(17)).astype(np.float32).mean(-1)
        dy, dx = _shift(frames[16] - frames[12], frames[4] - frames[0])
        label = names[record.label]
        assert (np.sign(dy), np.sign(dx)) == expected[label] and 3 <= abs(dy) + abs(dx) <= 12, (label, dy, dx)
