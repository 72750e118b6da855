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


def _burn_cpu(started, stop, max_seconds: float) -> None:
    """Spin one core from ``started.release()`` until ``stop`` is set (at most ``max_seconds``)."""
    import time

    started.release()
    end = time.perf_counter() + max_seconds
    x = 1.0
    while not stop.is_set() and time.perf_counter() < end:
        for _ in range(10_000):
            x = (x * 1.0000001) % 7.0


# The rendering of this spec, hashed (synth.json's content_sha256). Integer and IEEE-exact numpy only, so it is
# the same on every machine: a change here means the dataset changed (then bump SYNTH_FORMAT).
TINY_SEED3_CONTENT = "2386389788b6278fc3dbb45d25f754f7b9aac4ea466c400ee129b6bd33c3e110"


def test_the_same_dataset_on_any_machine_under_any_load(tmp_path):
    """Written serially, in 2 processes and in 2 processes while 2 others burn the CPU (where lossy x264 once
    emitted other frames): the same names and annotations, the same decoded planes, the same content hash,
    which is also the one recorded for this spec on another machine."""
    from videoconvmae.data.synth import SYNTH_FORMAT, decode_yuv420p

    a = write_synthetic_dataset(tmp_path / "a", seed=3, **TINY)
    ctx = get_context("spawn")
    started, stop = ctx.Semaphore(0), ctx.Event()
    burners = [ctx.Process(target=_burn_cpu, args=(started, stop, 120.0)) for _ in range(2)]
    for p in burners:
        p.start()
    try:
        for _ in burners:  # both spin before the write starts, and until it is over
            assert started.acquire(timeout=60), "a CPU burner did not start"
        b = write_synthetic_dataset(tmp_path / "b", seed=3, **TINY, workers=2)
    finally:
        stop.set()
        for p in burners:
            p.join(timeout=30)
    c = write_synthetic_dataset(tmp_path / "c", seed=4, **TINY)
    meta = [json.loads((root / "synth.json").read_text()) for root in (a, b, c)]
    assert meta[0]["format"] == SYNTH_FORMAT and meta[0]["content_sha256"] == meta[1]["content_sha256"]
    assert meta[0]["content_sha256"] == TINY_SEED3_CONTENT and meta[2]["content_sha256"] != TINY_SEED3_CONTENT
    files_a, files_b = _files(a), _files(b)
    assert files_a.keys() == files_b.keys()
    videos = [k for k in files_a if k.suffix in (".mp4", ".webm")]
    assert len(videos) == 2 * 5 * 2
    assert all(files_a[k] == files_b[k] for k in files_a if k not in videos and k.name != "synth.json")
    for k in videos:
        np.testing.assert_array_equal(decode_yuv420p(a / k), decode_yuv420p(b / k), err_msg=str(k))
    assert _training_inputs(a) == _training_inputs(b)  # what a run sees: decoded, cropped, normalised


def test_one_dataset_alone_is_the_same_as_in_the_full_write(tmp_path):
    """``datasets=("k400",)`` writes only the K400 files, and they decode to the full write's K400 exactly."""
    from videoconvmae.data.synth import decode_yuv420p

    full = write_synthetic_dataset(tmp_path / "full", seed=3, **TINY)
    alone = write_synthetic_dataset(tmp_path / "k400", seed=3, **TINY, datasets=("k400",))
    assert not (alone / "ssv2").exists() and not (alone / "imagenet").exists()
    files_full, files_alone = _files(full / "k400"), _files(alone / "k400")
    assert files_full.keys() == files_alone.keys() and len(files_alone) > 0
    for k in files_alone:
        if k.suffix == ".mp4":
            np.testing.assert_array_equal(decode_yuv420p(full / "k400" / k), decode_yuv420p(alone / "k400" / k))
        else:
            assert files_full[k] == files_alone[k], k
    assert json.loads((alone / "synth.json").read_text())["datasets"] == ["k400"]
    with pytest.raises(ValueError, match=r"datasets: expected a non-empty subset of k400, ssv2, imagenet"):
        write_synthetic_dataset(tmp_path / "bad", **TINY, datasets=("kinetics",))


def _training_inputs(root) -> list[bytes]:
    """The pretraining items of the K400 train split, seeded as the trainer seeds them, as bytes."""
    from videoconvmae.config import load_config
    from videoconvmae.data import build_dataset
    from videoconvmae.data.seeding import SeededItems

    k = root / "k400"
    cfg = load_config("pretrain_k400_tiny", [f"data.root={k}", f"data.train_annotation={k}/train.csv",
                                             "data.input_size=32", "data.short_side_size=32", "data.num_frames=4",
                                             "data.sampling_rate=1"])
    items = SeededItems(build_dataset(cfg.data, "train", "pretrain"), seed=0)
    return [items[i]["input"].numpy().tobytes() for i in range(len(items))]


def test_every_file_decodes_exactly_to_its_rendering_with_every_decoder(tmp_path):
    """Lossless: the decoded yuv planes ARE the rendering (rendered in any process); decord, PyAV and
    torchcodec then give the same RGB frames, within chroma subsampling of the rendered RGB."""
    from videoconvmae.data.synth import decode_yuv420p, rgb_to_yuv420p
    from videoconvmae.data.video import open_video

    spec = SynthSpec(seed=3, **TINY)
    root = write_synthetic_dataset(tmp_path, seed=3, **TINY, workers=2)
    jobs = _k400_jobs(spec, root / "k400") + _ssv2_jobs(spec, root / "ssv2")
    with get_context("spawn").Pool(2) as pool:
        in_workers = pool.map(render_clip, jobs)
    for job, rendered in zip(jobs, in_workers):
        np.testing.assert_array_equal(rendered, render_clip(job))
        np.testing.assert_array_equal(decode_yuv420p(job[-1]), rgb_to_yuv420p(rendered), err_msg=job[-1])
    for job in (jobs[0], jobs[-1]):  # one mp4, one webm
        frames = {}
        for backend in ("pyav", "decord", "torchcodec"):
            with open_video(job[-1], backend) as reader:
                frames[backend] = reader.get_frames(range(reader.num_frames)).astype(int)
        assert np.array_equal(frames["pyav"], frames["decord"]) and np.array_equal(frames["pyav"], frames["torchcodec"])
        assert np.abs(frames["pyav"] - render_clip(job)).mean() < 4


def test_rgb_to_yuv420p_is_bt601_limited_range():
    """Independent of the integer form: the BT.601 float equations (Y 16..235, chroma 16..240) to within 1."""
    from videoconvmae.data.synth import rgb_to_yuv420p

    rgb = np.random.default_rng(0).integers(0, 256, (2, 4, 6, 3)).astype(np.uint8)
    planes = rgb_to_yuv420p(rgb).astype(float)
    r, g, b = (rgb[..., i].astype(float) for i in range(3))
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    np.testing.assert_allclose(planes[:, :4], y, atol=1.0)
    mean = [c.reshape(2, 2, 2, 3, 2).mean(axis=(2, 4)) for c in (r, g, b)]
    u = 128 + (-37.797 * mean[0] - 74.203 * mean[1] + 112.0 * mean[2]) / 255
    v = 128 + (112.0 * mean[0] - 93.786 * mean[1] - 18.214 * mean[2]) / 255
    np.testing.assert_allclose(planes[:, 4:5].reshape(2, 2, 3), u, atol=1.0)
    np.testing.assert_allclose(planes[:, 5:6].reshape(2, 2, 3), v, atol=1.0)
    assert tuple(rgb_to_yuv420p(np.full((1, 2, 2, 3), 128, np.uint8)).ravel()) == (126,) * 4 + (128, 128)


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
